"""engine=vllm: the pure parts on the CPU (names, sampling parameters, outputs, IS correction), the engine's
weight-sync / sleep life cycle against a stand-in ``vllm`` module, and live tests that need vLLM + CUDA."""
from __future__ import annotations

import copy
import importlib.util
import sys
import types
from dataclasses import dataclass

import pytest
import torch

import rlvr
from rlvr.core.importance import ImportanceSamplingConfig, importance_metrics, importance_weights, scale_gradient
from rlvr.plugins.engines.vllm import VLLMEngine, VLLMEngineConfig
from rlvr.plugins.engines.vllm_utils import Completion, rollouts_from_outputs, sampling_kwargs, vllm_weight_name, \
    weights_for_vllm

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
LIVE_SKIP = "vLLM is not installed here (it needs a CUDA machine: pip install 'rlvr[vllm]')"


# ----- weight names and pushes ------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias", "model.layers.0.self_attn.q_proj.bias"),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", None),
    ("base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight", None),
    ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head.weight"),
    ("base_model.model.lm_head.original_module.weight", None),
    ("model.layers.1._checkpoint_wrapped_module.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"),
    ("base_model.model.model.embed_tokens.weight", "model.embed_tokens.weight"),
])
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
    targets = {n for n in merged if any(t in n for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"))}
    assert changed.keys() == targets  # the frozen base (embeddings, norms) is not re-sent
    for k, v in policy.model.state_dict().items():
        assert torch.equal(v, before[k])  # no merge/unmerge of the training model


# ----- sampling parameters ----------------------------------------------------------------------
def test_sampling_parameter_translation():
    cfg = VLLMEngineConfig(temperature=0.7, top_p=0.9, top_k=20, min_p=0.05)
    kw = sampling_kwargs(cfg, 8, 32, seed=123, greedy=False, stop_token_ids=[2, 2, 0])
    assert kw == {"n": 8, "max_tokens": 32, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
                  "logprobs": 0, "stop_token_ids": [0, 2], "skip_special_tokens": True, "detokenize": False,
                  "seed": 123}
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
        [Completion([10, 2], [{10: Logprob(-0.5)}, {2: Logprob(-0.25)}], "stop"),
         Completion([11, 12, 13], [{11: -1.0}, {12: -2.0}, {13: -3.0}], "length")],
        [Completion([2], [{2: Logprob(-0.1)}], "stop"),
         Completion([14, 15], None, "length")],
    ]
    ro = rollouts_from_outputs(prompts, outs, ["a", "b"], pad_id=0, eos_ids=[2], decode=lambda t: [str(r.tolist()) for r in t])
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
    torch.testing.assert_close(w, torch.tensor([[1.0, 3.0, float(e(torch.tensor(-1.5)))], [float(e(torch.tensor(0.2))), 1.0, 0.0]]))
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
    expected = torch.tensor([[min(2.0, float(torch.tensor(seq0).exp()))] * 3, [float(torch.tensor(seq1).exp())] * 2 + [0.0]])
    torch.testing.assert_close(w, expected)
    w = importance_weights(old, samp, mask, ImportanceSamplingConfig("sequence_mask", cap=1.6))
    assert (w[0] == 0).all()  # e^0.5 = 1.65 > 1.6: the whole row is masked
    torch.testing.assert_close(w[1], torch.tensor([1.2214028, 1.2214028, 0.0]))  # e^0.2 kept, padding 0
    metrics = importance_metrics(w, mask)
    assert set(metrics) == {"importance_sampling/mean", "importance_sampling/min", "importance_sampling/max",
                            "importance_sampling/masked"}


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


# ----- the engine's life cycle against a stand-in vLLM ----------------------------------------------
class FakeLLM:
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.loaded = kwargs, [], []
        model = types.SimpleNamespace(load_weights=lambda ws: self.loaded.append({k: v.clone() for k, v in ws}))
        runner = types.SimpleNamespace(model=model)
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(
            driver_worker=types.SimpleNamespace(worker=types.SimpleNamespace(model_runner=runner))))
        FakeLLM.instances.append(self)

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def generate(self, requests, sampling_params, use_tqdm):
        self.calls.append(("generate", len(requests)))
        outs = []
        for req, sp in zip(requests, sampling_params):
            comps = [types.SimpleNamespace(token_ids=[7 + j, 2], logprobs=[{7 + j: -1.0}, {2: -0.5}], finish_reason="stop")
                     for j in range(sp.kwargs["n"])]
            outs.append(types.SimpleNamespace(prompt_token_ids=req["prompt_token_ids"], outputs=comps))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: types.SimpleNamespace(kwargs=kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    FakeLLM.instances.clear()
    return mod


@pytest.mark.parametrize("lora", [False, True])
def test_engine_syncs_weights_after_each_optimizer_step_and_sleeps(fake_vllm, lora):
    policy = rlvr.create("model", "tiny", lora=lora)
    engine = VLLMEngine(VLLMEngineConfig(max_new_tokens=4, model_path="/models/tiny"))
    ro = engine.generate(policy, ["p one", "p two"], 3, [1, 2])
    llm = FakeLLM.instances[0]
    assert llm.kwargs["model"] == "/models/tiny" and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["gpu_memory_utilization"] == 0.3
    assert ro.num == 6 and ro.completion_ids[:3, 0].tolist() == [7, 8, 9] and not ro.truncated.any()
    assert ro.sampling_logps[0].tolist() == [-1.0, -0.5]
    first = llm.loaded[-1]
    assert "model.embed_tokens.weight" in first and not any("lora" in k for k in first)  # the first push: everything
    level = 1 if lora else 2
    assert llm.calls[-1] == ("sleep", level)

    llm.calls.clear()
    engine.generate(policy, ["p one"], 2, [3])  # nothing changed
    assert llm.calls[0] == ("wake_up", ("weights",))
    assert llm.calls.index(("wake_up", ("kv_cache",))) < llm.calls.index(("generate", 1))
    if lora:  # level 1 kept the weights (offloaded): no push
        assert len(llm.loaded) == 1 and ("reset_prefix_cache",) not in llm.calls
    else:  # level 2 dropped them: they go in again
        assert len(llm.loaded) == 2 and llm.loaded[-1].keys() == first.keys()
    pushes = len(llm.loaded)

    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    sum(p.sum() for p in params).backward()
    opt.step()  # an optimizer step: the next generation pushes the new weights first
    llm.calls.clear()
    engine.generate(policy, ["p one"], 2, [3])
    assert len(llm.loaded) == pushes + 1 and ("reset_prefix_cache",) in llm.calls
    pushed = llm.loaded[-1]
    if lora:  # level-1 sleep kept the base weights: only the adapted layers go again, folded
        assert "model.embed_tokens.weight" not in pushed and "model.layers.0.self_attn.q_proj.weight" in pushed
    else:  # level-2 sleep dropped the weights: all of them go again
        assert pushed.keys() == first.keys()
        assert not torch.equal(pushed["model.embed_tokens.weight"], first["model.embed_tokens.weight"])
    assert llm.calls.index(("generate", 1)) > llm.calls.index(("reset_prefix_cache",))


def test_engine_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    engine = VLLMEngine(VLLMEngineConfig())
    with pytest.raises(ImportError, match=r"rlvr\[vllm\]"):
        engine.generate(rlvr.create("model", "tiny"), ["x"], 2, [0])


# ----- live -------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_VLLM or not torch.cuda.is_available(), reason=LIVE_SKIP)
def test_live_vllm_logps_close_to_trainer():  # pragma: no cover - needs vLLM and a GPU
    from rlvr.kernels.causal_lm import completion_logprobs

    policy = rlvr.create("model", "hf", name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    policy.model.cuda()
    engine = VLLMEngine(VLLMEngineConfig(max_new_tokens=16, enforce_eager=True))
    ro = engine.generate(policy, ["What is 2 + 3?"], 4, [0])
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    mask = torch.cat([ro.prompt_mask, ro.completion_mask], 1)
    with torch.no_grad():
        lp = completion_logprobs(policy.model, ids, mask, ro.prompt_ids.shape[1])
    diff = ((lp - ro.sampling_logps) * ro.completion_mask).abs().max()
    assert float(diff) < 0.1
