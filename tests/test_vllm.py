"""engine=vllm: the pure parts on the CPU (names, sampling parameters, outputs, IS correction), the engine's
weight-sync / sleep life cycle against a stand-in ``vllm`` module, and live tests that need vLLM + CUDA."""

from __future__ import annotations

import copy
import importlib.util
import os
import pickle
import random
import sys
import types
import warnings
import weakref
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import rlvr
from rlvr.core.importance import ImportanceSamplingConfig, importance_metrics, importance_weights, scale_gradient
from rlvr.plugins.engines.vllm import VLLMEngine, VLLMEngineConfig
from rlvr.plugins.engines.vllm_utils import (
    INT64_MAX,
    Completion,
    engine_dtype,
    request_seeds,
    rollouts_from_outputs,
    sampling_kwargs,
    vllm_weight_name,
    weights_for_vllm,
)

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
TRAINER_TINY = [
    "model=tiny",
    "trainer.prompts_per_step=2",
    "trainer.num_generations=2",
    "trainer.progress=false",
    "trainer.threads=1",
    "trainer.eval_steps=0",
    "trainer.warmup_steps=0",
    "trainer.dynamic_sampling=off",  # one generate per step (a refill round would wake and sleep vLLM again)
    "trainer.update_dtype=float32",
]
LIVE_SKIP = "vLLM is not installed here (it needs a CUDA machine: pip install 'rlvr[vllm]')"


# ----- weight names and pushes ------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,expected",
    [
        ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ),
        ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias", "model.layers.0.self_attn.q_proj.bias"),
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", None),
        ("base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight", None),
        ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head.weight"),
        ("base_model.model.lm_head.original_module.weight", None),
        ("model.layers.1._checkpoint_wrapped_module.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"),
        ("base_model.model.model.embed_tokens.weight", "model.embed_tokens.weight"),
    ],
)
def test_vllm_weight_names(name, expected):
    assert vllm_weight_name(name) == expected


def test_full_weights_match_the_plain_state_dict():
    policy = rlvr.create("model", "tiny")
    pushed = dict(weights_for_vllm(policy.model))
    assert pushed.keys() == dict(policy.model.named_parameters()).keys()
    for name, p in policy.model.named_parameters():
        assert torch.equal(pushed[name], p)
    policy.model.model.embed_tokens.weight.requires_grad_(False)
    changed = dict(weights_for_vllm(policy.model, changed_only=True))
    assert "model.embed_tokens.weight" not in changed and len(changed) == len(pushed) - 1


def test_lora_pushes_folded_weights_without_touching_the_model():
    policy = rlvr.create("model", "tiny", lora=True)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    merged = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    pushed = dict(weights_for_vllm(policy.model))
    assert pushed.keys() == merged.keys() - {"lm_head.weight"}  # tied: vLLM reads the embedding
    for name, tensor in pushed.items():
        torch.testing.assert_close(tensor, merged[name], atol=1e-6, rtol=1e-6)
    changed = dict(weights_for_vllm(policy.model, changed_only=True))
    targets = {
        n
        for n in merged
        if any(t in n for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    }
    assert changed.keys() == targets  # the frozen base (embeddings, norms) is not re-sent
    for k, v in policy.model.state_dict().items():
        assert torch.equal(v, before[k])  # no merge/unmerge of the training model


# ----- sampling parameters ----------------------------------------------------------------------
def test_sampling_parameter_translation():
    cfg = VLLMEngineConfig(temperature=0.7, top_p=0.9, top_k=20, min_p=0.05)
    kw = sampling_kwargs(cfg, 8, 32, seed=123, greedy=False, stop_token_ids=[2, 2, 0])
    assert kw == {
        "n": 8,
        "max_tokens": 32,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "logprobs": 0,
        "stop_token_ids": [0, 2],
        "skip_special_tokens": True,
        "detokenize": False,
        "seed": 123,
    }
    greedy = sampling_kwargs(cfg, 2, 5, seed=None, greedy=True, stop_token_ids=[2])
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 0 and greedy["top_p"] == 1.0 and "seed" not in greedy
    assert sampling_kwargs(VLLMEngineConfig(), 2, 5, 1, False, [])["top_k"] == 0  # 0 = off in vLLM as here


@pytest.mark.skipif(not HAVE_VLLM, reason=LIVE_SKIP)
def test_sampling_parameters_are_accepted_by_vllm():
    from vllm import SamplingParams

    SamplingParams(**sampling_kwargs(VLLMEngineConfig(top_k=5), 4, 16, 7, False, [2]))


# ----- outputs -> rollouts ------------------------------------------------------------------------
@dataclass
class Logprob:
    logprob: float


def test_rollouts_from_outputs():
    prompts = [[5, 6, 7], [8]]
    outs = [
        [
            Completion([10, 2], [{10: Logprob(-0.5)}, {2: Logprob(-0.25)}], "stop"),
            Completion([11, 12, 13], [{11: -1.0}, {12: -2.0}, {13: -3.0}], "length"),
        ],
        [Completion([2], [{2: Logprob(-0.1)}], "stop"), Completion([14, 15], None, "length")],
    ]
    ro = rollouts_from_outputs(
        prompts, outs, ["a", "b"], pad_id=0, eos_ids=[2], decode=lambda t: [str(r.tolist()) for r in t]
    )
    assert ro.prompt_ids.tolist() == [[5, 6, 7], [5, 6, 7], [0, 0, 8], [0, 0, 8]]
    assert ro.prompt_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]]
    assert ro.completion_ids.tolist() == [[10, 2, 0], [11, 12, 13], [2, 0, 0], [14, 15, 0]]
    assert ro.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert ro.truncated.tolist() == [False, True, False, True]
    assert ro.group.tolist() == [0, 0, 1, 1] and ro.prompts == ["a", "a", "b", "b"]
    lp = ro.sampling_logps
    assert lp[0].tolist() == [-0.5, -0.25, 0.0] and lp[1].tolist() == [-1.0, -2.0, -3.0]
    assert torch.isnan(lp[3, :2]).all() and lp[3, 2] == 0  # no log-probs from the engine: NaN, ratio 1 later
    assert ro.completions[0] == "[10, 2, 0]"
    with pytest.raises(ValueError, match="same number of completions"):
        rollouts_from_outputs(prompts, [outs[0], outs[1][:1]], ["a", "b"], 0, [2])


# ----- importance sampling ------------------------------------------------------------------------
def _logps():
    old = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]])
    samp = torch.tensor([[-1.0, -3.0, 0.5], [-2.2, float("nan"), 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return old, samp, mask


def test_importance_weights_token_level():
    old, samp, mask = _logps()
    e = torch.exp
    w = importance_weights(old, samp, mask, ImportanceSamplingConfig("token_truncate", cap=3.0))
    torch.testing.assert_close(
        w, torch.tensor([[1.0, 3.0, float(e(torch.tensor(-1.5)))], [float(e(torch.tensor(0.2))), 1.0, 0.0]])
    )
    w = importance_weights(old, samp, mask, ImportanceSamplingConfig("token_mask", cap=3.0))
    assert w[0, 1] == 0 and w[0, 0] == 1 and w[1, 1] == 1 and w[1, 2] == 0  # e^2 > 3 masked; NaN -> 1; pad -> 0
    w = importance_weights(old, samp, mask, ImportanceSamplingConfig("token_truncate", cap=None, floor=0.5))
    assert w[0, 1] == pytest.approx(float(e(torch.tensor(2.0)))) and w[0, 2] == 0.5
    w = importance_weights(old, samp, mask, ImportanceSamplingConfig("off"))
    assert torch.equal(w, mask.float())


def test_importance_weights_sequence_level():
    old, samp, mask = _logps()
    seq0, seq1 = 0.0 + 2.0 - 1.5, 0.2  # sums of (old - sampling) over each row's tokens (NaN counts 0)
    w = importance_weights(old, samp, mask, ImportanceSamplingConfig("sequence_truncate", cap=2.0))
    expected = torch.tensor(
        [[min(2.0, float(torch.tensor(seq0).exp()))] * 3, [float(torch.tensor(seq1).exp())] * 2 + [0.0]]
    )
    torch.testing.assert_close(w, expected)
    w = importance_weights(old, samp, mask, ImportanceSamplingConfig("sequence_mask", cap=1.6))
    assert (w[0] == 0).all()  # e^0.5 = 1.65 > 1.6: the whole row is masked
    torch.testing.assert_close(w[1], torch.tensor([1.2214028, 1.2214028, 0.0]))  # e^0.2 kept, padding 0
    metrics = importance_metrics(w, mask)
    assert set(metrics) == {
        "importance_sampling/mean",
        "importance_sampling/min",
        "importance_sampling/max",
        "importance_sampling/masked",
    }


def test_importance_config_errors():
    with pytest.raises(ValueError, match="mode"):
        ImportanceSamplingConfig("token")
    with pytest.raises(ValueError, match="above the cap"):
        ImportanceSamplingConfig("token_mask", cap=1.0, floor=2.0)
    with pytest.raises(ValueError, match="needs a cap or a floor"):
        ImportanceSamplingConfig("token_truncate", cap=None)
    with pytest.raises(ValueError, match="importance sampling mode"):
        VLLMEngine(VLLMEngineConfig(importance_sampling="bogus"))
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngine(VLLMEngineConfig(gpu_memory_utilization=0.0))


def test_scale_gradient_weights_each_tokens_loss():
    loss = rlvr.create("loss", "grpo")
    torch.manual_seed(0)
    logps = (torch.randn(3, 4) - 2).requires_grad_()
    old = logps.detach() + 0.1 * torch.randn(3, 4)
    adv, mask = torch.randn(3), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).float()
    w = torch.rand(3, 4) * 2
    value, _ = loss(scale_gradient(logps, w), old, None, adv, mask)
    (grad,) = torch.autograd.grad(value, logps)
    plain, _ = loss(logps, old, None, adv, mask)
    assert float(value.detach()) == pytest.approx(float(plain.detach()))  # the value is unchanged
    # the reference: GRPO with each token's surrogate multiplied by w (TRL's per_token_loss * is_ratio)
    ratio = torch.exp(logps - old)
    per_token = -torch.minimum(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None]) * w
    ref = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    (ref_grad,) = torch.autograd.grad(ref, logps)
    torch.testing.assert_close(grad, ref_grad)


# ----- the engine against a stand-in vLLM ---------------------------------------------------------------
# ``fake_vllm`` mirrors what the review of vLLM 0.33.0's source found (docs/vllm.md):
# * ``LLM(...)`` reads VLLM_ENABLE_V1_MULTIPROCESSING (default 1). With 1 the engine core is another process:
#   ``llm.llm_engine`` holds a client, no model, and ``apply_model`` pickles its function for that process.
#   With 0 the model is ``llm.llm_engine.model_executor.driver_worker.worker.model_runner.model``.
# * its worker seeds random / numpy / torch with ``seed`` and sets the float32 matmul precision ("highest").
# * an ``n = G`` request becomes G requests seeded ``seed + j``; the sampling noise (an exponential race, as
#   vLLM's sampler) depends only on a request's seed and the token position.
# * log-probs are the processed ones: log-softmax of logits / T, renormalised over the top-k / top-p / min-p
#   support (raw log-softmax when greedy).
# * ``sleep(level=1)`` offloads the weights (kept), level 2 discards them; both free the KV cache;
#   ``wake_up(tags)`` brings back what is named. Generating asleep, or on discarded weights, is an error.
# * ``load_weights`` consumes its iterable one pair at a time (the model's own loader).
VOCAB, EOS = 24, 2
MP_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def fake_logits(context) -> torch.Tensor:
    """The stand-in model's next-token logits for a context (fixed, float64)."""
    g = torch.Generator().manual_seed(sum((i + 1) * int(t) for i, t in enumerate(context)) % (2**31) + 1)
    return torch.randn(VOCAB, generator=g, dtype=torch.float64) * 2


def processed_logprobs(logits: torch.Tensor, sp: dict) -> torch.Tensor:
    """vLLM's ``processed_logprobs``: logits / T, then top-k, top-p, min-p, each renormalising what it keeps."""
    if sp["temperature"] == 0:
        return torch.log_softmax(logits, -1)
    lp = torch.log_softmax(logits / sp["temperature"], -1)
    if sp["top_k"] > 0:
        lp = torch.log_softmax(lp.masked_fill(lp < lp.topk(sp["top_k"]).values[-1], float("-inf")), -1)
    if sp["top_p"] < 1:
        probs, order = lp.exp().sort(descending=True)
        drop = torch.zeros(VOCAB, dtype=torch.bool)
        drop[order[(probs.cumsum(0) - probs) >= sp["top_p"]]] = True  # after the kept mass reached top_p
        lp = torch.log_softmax(lp.masked_fill(drop, float("-inf")), -1)
    if sp["min_p"] > 0:
        p = lp.exp()
        lp = torch.log_softmax(lp.masked_fill(p < sp["min_p"] * p.max(), float("-inf")), -1)
    return lp


class FakeModel:
    """vLLM's nn.Module as the weight push sees it."""

    def __init__(self) -> None:
        self.pushes: list[dict] = []  # one {name: tensor} per load_weights call
        self.full: set | None = None  # the names of the first (complete) push
        self.valid: set = set()  # names holding real weights (sleep level 2 discards them all)
        self.max_alive = 0  # most yielded tensors alive at once while loading (streaming: the current one)

    def load_weights(self, weights) -> set:
        got, refs = {}, []
        for name, t in weights:
            refs.append(weakref.ref(t))
            got[name] = t.detach().clone()
            del t
            self.max_alive = max(self.max_alive, sum(r() is not None for r in refs))
        self.pushes.append(got)
        self.full = self.full or set(got)
        self.valid |= set(got)
        return set(got)


class FakeLLM:
    instances: list = []
    out_of_process = False  # True: a vLLM whose model is never reachable from here

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.calls, self.sample_seeds = kwargs, [], []
        self.model = FakeModel()
        self.in_process = os.environ.get(MP_ENV, "1") == "0" and not self.out_of_process
        if self.in_process:
            runner = types.SimpleNamespace(model=self.model)
            worker = types.SimpleNamespace(worker=types.SimpleNamespace(model_runner=runner))
            self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))
        else:
            self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace())  # a client
        seed = int(kwargs.get("seed", 0))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        torch.set_float32_matmul_precision("highest")
        self.awake = {"weights": True, "kv_cache": True}
        self.model.full, self.model.valid = None, set()  # loaded from the path: "valid" until discarded
        FakeLLM.instances.append(self)

    def apply_model(self, fn):
        pickle.dumps(fn)  # shipped to the engine process
        return [fn(self.model)]

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))
        self.awake = {"weights": False, "kv_cache": False}
        if level == 2:
            self.model.valid = set()

    def wake_up(self, tags=None) -> None:
        self.calls.append(("wake_up", tuple(tags)))
        for tag in tags or ("weights", "kv_cache"):
            self.awake[tag] = True

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True

    def generate(self, requests, sampling_params, use_tqdm=True):
        self.calls.append(("generate", len(requests)))
        assert all(self.awake.values()), f"generate while asleep: {self.awake}"
        assert self.model.full is None or self.model.valid >= self.model.full, "weights discarded, not re-pushed"
        outs = []
        for req, params in zip(requests, sampling_params):
            sp = params.kwargs
            seeds = [None if sp.get("seed") is None else sp["seed"] + j for j in range(sp["n"])]
            comps = [self._sample(req["prompt_token_ids"], sp, s) for s in seeds]
            outs.append(types.SimpleNamespace(prompt_token_ids=req["prompt_token_ids"], outputs=comps))
        return outs

    def _sample(self, prompt, sp: dict, seed):
        gen = None  # unseeded: the global RNG
        if seed is not None:
            self.sample_seeds.append(seed)
            gen = torch.Generator().manual_seed(seed)
        ids, lps, reason = [], [], "length"
        for _ in range(sp["max_tokens"]):
            lp = processed_logprobs(fake_logits(list(prompt) + ids), sp)
            if sp["temperature"] == 0:
                tok = int(lp.argmax())
            else:
                q = torch.empty(VOCAB, dtype=torch.float64).exponential_(generator=gen)
                tok = int((lp.exp() / q).argmax())
            ids.append(tok)
            lps.append({tok: Logprob(float(lp[tok]))})
            if tok in sp["stop_token_ids"]:
                reason = "stop"
                break
        return types.SimpleNamespace(token_ids=ids, logprobs=lps, finish_reason=reason)


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: types.SimpleNamespace(kwargs=kw)
    mod.__version__ = "0.33.0-stand-in"
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setenv(MP_ENV, "unset")
    monkeypatch.delenv(MP_ENV)  # recorded: whatever the engine sets is undone after the test
    FakeLLM.instances.clear()
    return mod


def test_stand_in_mirrors_vllm(fake_vllm, monkeypatch):
    """The stand-in's behaviours the engine's tests rely on (so those tests cannot pass vacuously)."""
    llm = FakeLLM(seed=3)
    assert not llm.in_process and not hasattr(llm.llm_engine, "model_executor")  # default: another process
    with pytest.raises((AttributeError, pickle.PicklingError)):
        llm.apply_model(lambda m: m)
    sp = {
        "n": 2,
        "max_tokens": 6,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "seed": 10,
        "stop_token_ids": [],
    }
    a, b = llm.generate(
        [{"prompt_token_ids": [5, 6]}] * 2,
        [types.SimpleNamespace(kwargs=sp), types.SimpleNamespace(kwargs={**sp, "seed": 11})],
    )
    assert a.outputs[1].token_ids == b.outputs[0].token_ids  # seed 10 + 1 == 11 + 0: the same sample
    assert llm.sample_seeds == [10, 11, 11, 12]
    torch.manual_seed(1)
    before = torch.get_rng_state()
    FakeLLM(seed=0)
    assert not torch.equal(before, torch.get_rng_state())  # constructing vLLM reseeds the global RNG


def _policy(lora=False):
    return rlvr.create("model", "tiny", lora=lora)


def _engine(**kw) -> VLLMEngine:
    return VLLMEngine(VLLMEngineConfig(**{"max_new_tokens": 4, "model_path": "/models/tiny", **kw}))


# item 1: seeds
def test_request_seeds_never_share_a_sample_seed():
    def samples(seeds, n):
        return [s + j for s in request_seeds(seeds, n) for j in range(n)]

    consecutive = [1_000_003 * 7 + 10_007 * 3 + g for g in range(16)]  # Trainer.group_seeds of one step
    for seeds, n in [
        (consecutive, 8),
        ([INT64_MAX, INT64_MAX - 1, 0, 1], 4),
        ([5, 5, 5], 3),
        ([0, INT64_MAX // 4], 4),
        (consecutive, 1),
    ]:
        got = samples(seeds, n)
        assert len(set(got)) == len(got) and all(0 <= s <= INT64_MAX for s in got), (seeds, n)
        assert request_seeds(seeds, n) == request_seeds(list(seeds), n)  # deterministic
    # without a collision a group's seeds depend on its own group seed only
    assert request_seeds(consecutive, 8)[3] == request_seeds([consecutive[3]], 8)[0]
    steps = [samples([7 + 10_007 * t + g for g in range(4)], 4) for t in range(3)]
    assert len({s for st in steps for s in st}) == 48  # and none is reused by the next steps either


def test_engine_gives_every_sample_of_a_step_its_own_seed(fake_vllm):
    engine, policy = _engine(), _policy()
    seeds = [1_000_003 + 10_007 + g for g in range(3)]  # consecutive, as Trainer.group_seeds
    ro = engine.generate(policy, ["same prompt"] * 3, 4, seeds)
    got = FakeLLM.instances[0].sample_seeds
    assert len(got) == 12 and len(set(got)) == 12 and ro.num == 12
    ids = [tuple(r.tolist()) for r in ro.completion_ids]
    assert ids[1] != ids[4] or ids[2] != ids[5] or ids[3] != ids[6]  # group 1 does not replay group 0 shifted
    engine.generate(policy, ["x", "y"], 4, [INT64_MAX, 2**64 + 5])
    assert max(FakeLLM.instances[0].sample_seeds) <= INT64_MAX  # inside int64, whatever the caller passed


# item 2: tensor parallelism
@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_is_rejected_with_a_clear_message(tp):
    with pytest.raises(ValueError, match=rf"tensor_parallel_size={tp} is not supported.*tensor_parallel_size=1"):
        VLLMEngine(VLLMEngineConfig(tensor_parallel_size=tp))


# item 3: the in-process engine core
def test_inherited_multiprocessing_env_is_overridden(fake_vllm, monkeypatch):
    monkeypatch.setenv(MP_ENV, "1")
    engine, policy = _engine(), _policy()
    with pytest.warns(UserWarning, match=f"{MP_ENV}=1 from the environment is overridden"):
        ro = engine.generate(policy, ["p"], 2, [0])
    llm = FakeLLM.instances[0]
    assert os.environ[MP_ENV] == "0" and llm.in_process and ro.num == 2
    assert llm.model.pushes and "model.embed_tokens.weight" in llm.model.pushes[0]


def test_unreachable_model_is_a_clear_error(fake_vllm, monkeypatch):
    monkeypatch.setattr(FakeLLM, "out_of_process", True)
    with pytest.raises(RuntimeError, match="did not expose its model in this process"):
        _engine().generate(_policy(), ["p"], 2, [0])


# item 4: streamed push
@pytest.mark.parametrize("lora", [False, True])
def test_weights_are_streamed_one_tensor_at_a_time(fake_vllm, lora):
    policy = _policy(lora)
    if lora:
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
    engine = _engine()
    engine.generate(policy, ["p"], 2, [0])
    model = FakeLLM.instances[0].model
    assert len(model.pushes[0]) > 10 and model.max_alive <= 1
    if lora:  # still the folded weights
        merged = copy.deepcopy(policy.model).merge_and_unload().state_dict()
        name = "model.layers.0.self_attn.q_proj.weight"
        torch.testing.assert_close(model.pushes[0][name], merged[name], atol=1e-6, rtol=1e-6)


# item 5: sleep only for the rest of the training step
@pytest.mark.parametrize("lora", [False, True])
def test_engine_sleeps_only_when_released(fake_vllm, lora):
    policy, engine = _policy(lora), _engine()
    ro = engine.generate(policy, ["p one", "p two"], 3, [1, 2])
    llm = FakeLLM.instances[0]
    assert llm.kwargs["model"] == "/models/tiny" and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["gpu_memory_utilization"] == 0.3
    assert ro.num == 6 and torch.isfinite(ro.sampling_logps[ro.completion_mask.bool()]).all()
    first = llm.model.pushes[-1]
    assert "model.embed_tokens.weight" in first and not any("lora" in k for k in first)  # the first push: all
    engine.generate(policy, ["p one"], 1, [3], greedy=True)  # evaluation-like calls: no sleep, no re-push
    engine.generate(policy, ["p one"], 2, [3])
    assert not any(c[0] == "sleep" for c in llm.calls) and len(llm.model.pushes) == 1

    level = 1 if lora else 2
    engine.release(policy)
    engine.release(policy)  # already asleep: once
    assert [c for c in llm.calls if c[0] == "sleep"] == [("sleep", level)]
    llm.calls.clear()
    engine.generate(policy, ["p one"], 2, [3])
    assert llm.calls[0] == ("wake_up", ("weights",))
    assert llm.calls.index(("wake_up", ("kv_cache",))) < llm.calls.index(("generate", 1))
    if lora:  # level 1 kept the weights (offloaded): no push
        assert len(llm.model.pushes) == 1 and ("reset_prefix_cache",) not in llm.calls
    else:  # level 2 dropped them: they go in again
        assert len(llm.model.pushes) == 2 and llm.model.pushes[-1].keys() == first.keys()
    pushes = len(llm.model.pushes)

    engine.release(policy)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    sum(p.sum() for p in params).backward()
    opt.step()  # an optimizer step: the next generation pushes the new weights first
    llm.calls.clear()
    engine.generate(policy, ["p one"], 2, [3])
    assert len(llm.model.pushes) == pushes + 1 and ("reset_prefix_cache",) in llm.calls
    pushed = llm.model.pushes[-1]
    if lora:  # level-1 sleep kept the base weights: only the adapted layers go again, folded
        assert "model.embed_tokens.weight" not in pushed and "model.layers.0.self_attn.q_proj.weight" in pushed
    else:  # level-2 sleep dropped the weights: all of them go again
        assert pushed.keys() == first.keys()
        assert not torch.equal(pushed["model.embed_tokens.weight"], first["model.embed_tokens.weight"])
    assert llm.calls.index(("generate", 1)) > llm.calls.index(("reset_prefix_cache",))


def test_trainer_releases_vllm_once_per_step_and_evaluation_keeps_it_awake(fake_vllm, tmp_path):
    cfg = rlvr.compose(
        TRAINER_TINY
        + [
            "engine=vllm",
            "engine.model_path=/models/tiny",
            "engine.max_new_tokens=4",
            f"trainer.output_dir={tmp_path}",
        ]
    )
    trainer = rlvr.Trainer(cfg)
    trainer.train_step()
    llm = FakeLLM.instances[0]
    assert [c for c in llm.calls if c[0] == "sleep"] == [("sleep", 2)]
    pushes = len(llm.model.pushes)
    trainer.evaluate(limit=3, num_samples=2)  # greedy + sampled chunks: one push (the optimizer step's), no sleep
    assert [c for c in llm.calls if c[0] == "sleep"] == [("sleep", 2)] and len(llm.model.pushes) == pushes + 1
    trainer.train_step()
    assert [c for c in llm.calls if c[0] == "sleep"] == [("sleep", 2)] * 2


# item 6: dtype and batched tokens
def test_engine_dtype_defaults_to_bfloat16_on_gpu():
    assert engine_dtype("auto", torch.float32, on_cuda=True, bf16_supported=True) == "bfloat16"
    assert engine_dtype("auto", torch.float32, on_cuda=True, bf16_supported=False) == "float16"
    assert engine_dtype("auto", torch.float16, on_cuda=True, bf16_supported=True) == "float16"
    assert engine_dtype("auto", torch.float32, on_cuda=False, bf16_supported=False) == "float32"
    assert engine_dtype("float32", torch.bfloat16, on_cuda=True, bf16_supported=True) == "float32"


def test_llm_arguments_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    kw = _engine().llm_kwargs(_policy())
    assert kw["dtype"] == "bfloat16" and kw["max_num_batched_tokens"] == 4096 and kw["tensor_parallel_size"] == 1
    assert "max_num_batched_tokens" not in _engine(max_num_batched_tokens=0).llm_kwargs(_policy())  # vLLM's own
    with pytest.raises(ValueError, match="max_num_batched_tokens=64 is below engine.max_num_seqs=256"):
        VLLMEngine(VLLMEngineConfig(max_num_batched_tokens=64))
    with pytest.raises(ValueError, match="engine.dtype='fp8'"):
        VLLMEngine(VLLMEngineConfig(dtype="fp8"))


def test_weights_are_pushed_in_the_engine_dtype(fake_vllm):
    engine, policy = _engine(dtype="bfloat16"), _policy()
    engine.generate(policy, ["p"], 2, [0])
    llm = FakeLLM.instances[0]
    assert llm.kwargs["dtype"] == "bfloat16"
    pushed = llm.model.pushes[0]
    assert pushed and {t.dtype for t in pushed.values()} == {torch.bfloat16}
    ref = dict(policy.model.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(pushed["model.layers.0.mlp.up_proj.weight"], ref.detach().to(torch.bfloat16))


# item 7: side effects on the trainer's process
def test_vllm_side_effects_on_rngs_and_matmul_precision_are_undone(fake_vllm):
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        torch.manual_seed(123)
        random.seed(7)
        np.random.seed(9)
        before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
        engine, policy = _engine(), _policy()

        def unchanged():
            assert torch.get_float32_matmul_precision() == "medium"
            assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
            assert (np.random.get_state()[1] == before[2]).all()

        engine.generate(policy, ["p"], 2, [0])  # starts vLLM, which reseeds and sets the precision
        unchanged()
        engine.release(policy)
        engine.generate(policy, ["p"], 2, [1])  # wake up, push, generate
        unchanged()
    finally:
        torch.set_float32_matmul_precision(precision)


# item 8: importance sampling with a truncated support
def test_truncated_sampling_with_importance_correction_warns():
    for kw in ({"top_p": 0.9}, {"top_k": 5}, {"min_p": 0.1}):
        with pytest.warns(UserWarning, match="biased low"):
            VLLMEngine(VLLMEngineConfig(**kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VLLMEngine(VLLMEngineConfig())  # full support
        VLLMEngine(VLLMEngineConfig(top_k=5, importance_sampling="off"))  # no correction


def test_processed_logprobs_are_renormalised_over_the_truncated_support(fake_vllm):
    """Why the warning: with top-k the engine's log-prob of each sampled token is above the full softmax's."""
    with pytest.warns(UserWarning, match="biased low"):
        engine = _engine(top_k=3, temperature=0.7, max_new_tokens=5)
    policy = _policy()
    ro = engine.generate(policy, ["p"], 4, [0])
    gaps = []
    for i in range(ro.num):
        ids = [t for t in ro.prompt_ids[i].tolist() if t != policy.tokenizer.pad_token_id]
        for j in range(int(ro.completion_mask[i].sum())):
            tok = int(ro.completion_ids[i, j])
            full = torch.log_softmax(fake_logits(ids) / 0.7, -1)[tok]  # the trainer's temperature-only log-prob
            gaps.append(float(ro.sampling_logps[i, j]) - float(full))
            ids.append(tok)
    assert min(gaps) > 0  # the IS ratio exp(trainer - engine) would be < 1 on every token


def test_engine_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    engine = VLLMEngine(VLLMEngineConfig())
    with pytest.raises(ImportError, match=r"rlvr\[vllm\]"):
        engine.generate(rlvr.create("model", "tiny"), ["x"], 2, [0])


# ----- live -------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_VLLM or not torch.cuda.is_available(), reason=LIVE_SKIP)
def test_live_vllm_logps_close_to_trainer():  # pragma: no cover - needs vLLM and a GPU
    from rlvr.modeling.causal_lm import completion_logprobs

    policy = rlvr.create("model", "hf", name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    policy.model.cuda()
    engine = VLLMEngine(VLLMEngineConfig(max_new_tokens=16, enforce_eager=True, dtype="float32"))  # as the trainer
    ro = engine.generate(policy, ["What is 2 + 3?"], 4, [0])
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    mask = torch.cat([ro.prompt_mask, ro.completion_mask], 1)
    with torch.no_grad():
        lp = completion_logprobs(policy.model, ids, mask, ro.prompt_ids.shape[1])
    diff = ((lp - ro.sampling_logps) * ro.completion_mask).abs().max()
    assert float(diff) < 0.1
