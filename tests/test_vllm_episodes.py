"""engine=vllm multi-turn episodes (env=...) against a stand-in vLLM whose model is the tiny policy.

The stand-in (``TinyLLM``) honours the API surface ``VLLMEngine.generate_episodes`` uses: ``LLM.generate`` with
token-id prompts (``{"prompt_token_ids": [...]}``, what ``vllm.inputs.TokensPrompt`` is) and one
``SamplingParams`` per request (``n``, ``max_tokens``, ``seed``, ``stop_token_ids``, ``temperature``...); each
completion holds the sampled ``token_ids`` (the stop token included, as vLLM returns it), their log-probs and a
finish reason. Its next-token logits are the tiny policy's on the request's token ids (prefilled afresh for every
request, then decoded with that request's own KV cache), so a request that carried anything but the exact
trajectory would give other log-probs. Not tested on live vLLM.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import rlvr
from rlvr.core.episodes import EpisodeStats, ScriptedSampler, run_episodes
from rlvr.plugins.engines.hf import cache_argument
from rlvr.plugins.engines.vllm import VLLMEngine, VLLMEngineConfig
from rlvr.plugins.engines.vllm_utils import INT64_MAX, episode_request_seeds
from tests.test_vllm import TRAINER_TINY, FakeLLM, Logprob, fake_vllm  # noqa: F401 - the stand-in vllm fixture

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "123*456"}}</tool_call>'
BAD = '<tool_call>{"name": "calculator", "arguments": {"expression": 1+}}</tool_call>'
ROW = {"question": "What is 123 * 456?", "answer": 56088}
EOT = 2  # the tiny tokenizer's <|im_end|>


class TinyLLM(FakeLLM):
    """The stand-in vLLM with ``policy``'s model. ``script`` {episode: token ids}: tokens written instead of sampled
    (the end-of-turn token once the script is used up), as :class:`ScriptedSampler` does on the hf path; the
    episode of a request is ``seed // turns`` (episode_request_seeds with group seeds 0..B-1). ``eos_rate``:
    when sampling, the share of tokens replaced by the end-of-turn token (drawn from the request's generator:
    the random tiny model rarely ends a turn by itself)."""

    policy = None
    script: dict[int, list[int]] | None = None
    turns = 1
    eos_rate = 0.0
    log: list[list[tuple[list[int], dict]]] = []  # per generate call: (prompt token ids, sampling kwargs)

    def generate(self, requests, sampling_params, use_tqdm=True):
        TinyLLM.log.append([(list(r["prompt_token_ids"]), p.kwargs) for r, p in zip(requests, sampling_params)])
        return super().generate(requests, sampling_params, use_tqdm)

    def _sample(self, prompt, sp, seed):
        if seed is not None:
            self.sample_seeds.append(seed)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        queue = self.script.get(seed // self.turns) if self.script is not None else None
        ids, lps, reason = [], [], "length"
        cache = DynamicCache()  # a fresh cache per request: the logits depend on the request's token ids only
        feed = list(prompt)
        for _ in range(sp["max_tokens"]):
            with torch.no_grad():
                kw = {cache_argument(self.policy.model): cache}
                out = self.policy.model(input_ids=torch.tensor([feed]), use_cache=True, **kw)
            logits = out.logits[0, -1].double()
            t = sp["temperature"]
            lp = torch.log_softmax(logits / t if t > 0 else logits, -1)
            if queue is not None:
                tok = queue.pop(0) if queue else EOT
            elif t == 0:
                tok = int(lp.argmax())
            else:
                q = torch.empty(lp.shape[0], dtype=torch.float64).exponential_(generator=gen)
                tok = int((lp.exp() / q).argmax())
                if float(torch.rand(1, generator=gen)) < self.eos_rate:
                    tok = EOT
            ids.append(tok)
            feed = [tok]
            lps.append({tok: Logprob(float(lp[tok]))})
            if tok in sp["stop_token_ids"]:
                reason = "stop"
                break
        return type("Completion", (), {"token_ids": ids, "logprobs": lps, "finish_reason": reason})()


@pytest.fixture(scope="module")
def tiny():
    return rlvr.create("model", "tiny")


@pytest.fixture
def llm(fake_vllm, tiny, monkeypatch):  # noqa: F811 - the fixture imported above
    fake_vllm.LLM = TinyLLM
    monkeypatch.setattr(TinyLLM, "policy", tiny)
    monkeypatch.setattr(TinyLLM, "log", [])
    monkeypatch.setattr(TinyLLM, "script", None)
    monkeypatch.setattr(TinyLLM, "eos_rate", 0.0)
    return TinyLLM


def vllm_engine(max_new: int, **kw) -> VLLMEngine:
    return VLLMEngine(
        VLLMEngineConfig(max_new_tokens=max_new, model_path="/models/tiny", max_prompt_length=1024, **kw)
    )


def calc_env(**kw):
    return rlvr.create("env", "calculator", **kw)


def scripted_pair(tiny, llm, env, turns, max_new=96, G=2):
    """The same scripted episodes through the hf loop and the vLLM engine: (hf Rollouts, vLLM Rollouts)."""
    tok = tiny.tokenizer
    hf = run_episodes(tiny, env, [ROW], G, [0], ScriptedSampler(tok, turns, G, EOT), max_new, 1024)
    llm.turns = int(env.cfg.max_turns)
    llm.script = {e: list(q) for e, q in enumerate(ScriptedSampler(tok, turns, G, EOT).queues)}
    ro = vllm_engine(max_new).generate_episodes(tiny, env, [ROW], G, [0])
    return hf, ro


def without_timings(episode: dict) -> dict:
    out = {k: v for k, v in episode.items() if k != "tool_seconds"}
    out["infos"] = [{k: v for k, v in i.items() if k != "tool_seconds"} for i in episode["infos"]]
    return out


CASES = {
    "tool call, then answer": ({}, [[CALL, "The answer is 56088."], ["56088"]], 96),
    "max_turns": ({"max_turns": 2, "max_tokens": 1000}, [[CALL, CALL, CALL], [CALL, "56088"]], 96),
    "max_new_tokens cuts a turn": ({}, [["x" * 200], ["56088"]], 16),
    "max_tokens cuts the episode": ({"max_tokens": 120}, [[CALL, "x" * 300], ["56088"]], 96),
    "tool errors": ({"max_turns": 6, "max_tokens": 2000}, [[BAD, '<tool_call>{"name": "rm"}</tool_call>', "0"]], 100),
}


@pytest.mark.parametrize("case", list(CASES))
def test_scripted_episodes_are_token_for_token_those_of_the_hf_path(tiny, llm, case):
    env_kw, turns, max_new = CASES[case]
    env = calc_env(**env_kw)
    hf, ro = scripted_pair(tiny, llm, env, turns, max_new, G=len(turns))
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "attention_mask", "truncated"):
        assert torch.equal(getattr(hf, name), getattr(ro, name)), name
    assert [without_timings(e) for e in hf.episodes] == [without_timings(e) for e in ro.episodes]
    assert hf.completions == ro.completions
    m = ro.completion_mask.bool()
    assert torch.allclose(hf.sampling_logps[m], ro.sampling_logps[m], atol=1e-4)  # same model, same contexts
    env_tokens = (ro.completion_mask == 0) & (ro.attention_mask == 1)
    assert (ro.sampling_logps[env_tokens] == 0).all()
    if case == "tool call, then answer":
        assert env_tokens[0].sum() > 5 and ro.episodes[0]["messages"][3] == {
            "role": "tool",
            "name": "calculator",
            "content": "56088",
        }
    stops = {
        "max_turns": "max_turns",
        "max_new_tokens cuts a turn": "max_new_tokens",
        "max_tokens cuts the episode": "max_tokens",
    }
    if case in stops:
        assert ro.episodes[0]["stop"] == stops[case] and ro.truncated[0]
    if case == "max_turns":
        assert ro.episodes[0]["turns"] == 2
    if case == "max_tokens cuts the episode":
        assert int(ro.attention_mask[0].sum()) == 120
    if case == "tool errors":
        assert ro.episodes[0]["tool_errors"] == 2 and ro.episodes[0]["stop"] == "env_done"


def test_each_turn_is_one_batched_request_of_the_whole_token_history(tiny, llm):
    env = calc_env(max_turns=3, max_tokens=600)
    turns = [[CALL, CALL, CALL], [CALL, "56088"], ["56088"]]
    _, ro = scripted_pair(tiny, llm, env, turns, max_new=96, G=3)
    prompt = ro.prompt_ids[0][ro.prompt_mask[0] == 1].tolist()
    assert [len(call) for call in llm.log] == [3, 2, 1]  # one generate call per turn, over the active episodes
    for t, call in enumerate(llm.log):
        for ids, sp in call:
            e, turn = divmod(sp["seed"], 3)  # episode_request_seeds: block + j * max_turns + t
            assert turn == t
            comp = ro.completion_ids[e][ro.attention_mask[e] == 1].tolist()
            k = len(ids) - len(prompt)
            assert ids == prompt + comp[:k]  # token in: the prompt and every token so far, nothing re-tokenised
            assert k == 0 or ro.completion_mask[e, k - 1] == 0  # a turn starts after the env's inserted tokens
            assert sp["n"] == 1 and sp["max_tokens"] == min(96, 600 - k) and sp["stop_token_ids"] == [EOT]
            assert sp["detokenize"] is False and sp["logprobs"] == 0
    assert [e["turns"] for e in ro.episodes] == [3, 2, 1]
    assert ro.episodes[0]["stop"] == "max_turns" and ro.episodes[1]["stop"] == "env_done"


def test_request_seeds_are_distinct_per_episode_and_turn():
    seeds = episode_request_seeds([7, 8, 9], 4, 5)
    flat = [s for ep in seeds for s in ep]
    assert len(seeds) == 12 and len(set(flat)) == 60 and all(0 <= s <= INT64_MAX for s in flat)
    assert episode_request_seeds([8], 4, 5) == seeds[4:8]  # a group's seeds depend on its own group seed only
    big = episode_request_seeds([INT64_MAX, 2**70], 8, 6)
    assert all(0 <= s <= INT64_MAX for ep in big for s in ep) and len({s for ep in big for s in ep}) == 96


def test_sampled_episodes_depend_on_their_own_seed_only(tiny, llm):
    llm.eos_rate = 0.3
    env = rlvr.create("env", "guess", max_turns=3)
    rows = [
        {"question": "Guess 1-20", "answer": 7, "low": 1, "high": 20},
        {"question": "Guess 1-20!", "answer": 3, "low": 1, "high": 20},
    ]
    engine = vllm_engine(6)
    stats = EpisodeStats()
    both = engine.generate_episodes(tiny, env, rows, 2, [11, 12], stats=stats)
    assert stats.generation > 0 and stats.env >= 0
    seeds = FakeLLM.instances[0].sample_seeds
    assert len(seeds) == len(set(seeds)) == sum(e["turns"] for e in both.episodes)  # no turn reuses a seed
    assert max(e["turns"] for e in both.episodes) > 1  # multi-turn, sampled
    alone = engine.generate_episodes(tiny, env, rows[1:], 2, [12])
    for i in range(2):
        k = int(both.attention_mask[2 + i].sum())
        assert k == int(alone.attention_mask[i].sum())
        assert torch.equal(both.completion_ids[2 + i, :k], alone.completion_ids[i, :k])
        assert torch.equal(both.completion_mask[2 + i, :k], alone.completion_mask[i, :k])
    other = engine.generate_episodes(tiny, env, rows[1:], 2, [13])
    assert not torch.equal(other.completion_ids, alone.completion_ids)
    calls = len(llm.log)
    greedy = engine.generate_episodes(tiny, env, rows[1:], 2, [12], greedy=True)
    assert torch.equal(greedy.completion_ids[0], greedy.completion_ids[1])  # temperature 0: the seed is moot
    assert all(sp["temperature"] == 0.0 for call in llm.log[calls:] for _, sp in call)


def test_max_model_len_fits_a_whole_episode(tiny, llm):
    env = calc_env(max_tokens=700)
    engine = vllm_engine(8)
    llm.script = {}
    engine.generate_episodes(tiny, env, [ROW], 1, [0])
    assert FakeLLM.instances[0].kwargs["max_model_len"] == 1024 + 700
    with pytest.raises(ValueError, match=r"engine.max_model_len=2024"):
        engine.generate_episodes(tiny, calc_env(max_tokens=1000), [ROW], 1, [0])
    with pytest.raises(ValueError, match=r"max_model_len is 600: set engine.max_model_len=1724"):
        vllm_engine(8, max_model_len=600).generate_episodes(tiny, env, [ROW], 1, [0])


def test_trainer_runs_episodes_on_vllm(llm, tmp_path):
    """env=... with engine=vllm: build_env accepts it, a step logs the episode metrics, evaluation runs greedy
    episodes, and vLLM sleeps once per training step."""
    llm.eos_rate = 0.3
    cfg = rlvr.compose(
        TRAINER_TINY
        + [
            "engine=vllm",
            "engine.model_path=/models/tiny",
            "engine.max_new_tokens=6",
            "engine.max_prompt_length=1024",
            "env=guess",
            "env.max_turns=3",
            "task=guess",
            "reward=[guess_valid,guess_solved]",
            f"trainer.output_dir={tmp_path}",
        ]
    )
    trainer = rlvr.Trainer(cfg)
    llm.policy = trainer.policy  # the stand-in samples with the trained weights
    metrics = trainer.train_step()
    for key in ("env/turns/mean", "env/tool_error_rate", "env/generation_seconds", "env/env_seconds"):
        assert key in metrics, key
    assert metrics["env/generation_seconds"] > 0
    inst = FakeLLM.instances[0]
    assert [c for c in inst.calls if c[0] == "sleep"] == [("sleep", 2)]
    out = trainer.evaluate(limit=2)
    assert out["eval/num_prompts"] == 2 and "eval/turns/mean" in out
    assert [c for c in inst.calls if c[0] == "sleep"] == [("sleep", 2)]
