"""Multi-turn episodes (rlvr/core/episodes.py): token-in/token-out trajectories, masks, limits, KV extension."""

from __future__ import annotations

import json
import time

import pytest
import torch

import rlvr
from rlvr.core.environment import EnvConfig, ToolEnv
from rlvr.core.episodes import EpisodeStats, render, run_episodes
from rlvr.modeling.shared_prompt import grouped_completion_logprobs
from tests.conftest import end_turns_often

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "123*456"}}</tool_call>'


class Script:
    """A sampler that writes given assistant turns (each followed by the end-of-turn token), then ``filler``.

    Episode e = b·G + j draws from ``Generator(seeds[b]·1000 + j)``; with seeds = range(B) the generator's
    initial seed names the episode. Records the logits it was given, per episode, to compare sessions."""

    def __init__(self, tok, turns: list[list[str]], G: int, filler: str = "x") -> None:
        eos = tok.convert_tokens_to_ids("<|im_end|>")
        self.queues = [
            [t for turn in ep for t in tok(turn, add_special_tokens=False)["input_ids"] + [eos]] for ep in turns
        ]
        self.fill = tok(filler, add_special_tokens=False)["input_ids"][0]
        self.G = G
        self.seen: dict[int, list[torch.Tensor]] = {}

    def __call__(self, logits, gens, greedy):
        out = []
        for row, g in zip(logits, gens):
            s = g.initial_seed()
            e = (s // 1000) * self.G + s % 1000
            self.seen.setdefault(e, []).append(row.clone())
            out.append(self.queues[e].pop(0) if self.queues[e] else self.fill)
        tokens = torch.tensor(out)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)


def calc_env(**kw):
    return rlvr.create("env", "calculator", **kw)


@pytest.fixture(scope="module")
def tiny():
    return rlvr.create("model", "tiny")


def run(policy, env, turns, G=2, session="kv", max_new=96, rows=None):
    rows = rows or [{"question": "What is 123 * 456?", "answer": 56088}]
    script = Script(policy.tokenizer, turns, G)
    ro = run_episodes(policy, env, rows, G, list(range(len(rows))), script, max_new, 4096, session=session)
    return ro, script


def test_tool_episode_is_the_template_conversation_token_for_token(tiny):
    env = calc_env()
    ro, _ = run(tiny, env, [[CALL, "The answer is 56088."], ["56088"]])
    tok = tiny.tokenizer
    ep0, ep1 = ro.episodes
    assert [m["role"] for m in ep0["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert ep0["messages"][3]["content"] == "56088" and ep0["stop"] == "env_done" and ep0["turns"] == 2
    assert ep1["turns"] == 1 and ep1["tool_calls"] == 0 and not ro.truncated.any()
    # token-in/token-out: prompt + completion == what the template renders for the final conversation,
    # except the separator after the very last end-of-turn token (never sampled)
    prompt = ro.prompt_ids[0][ro.prompt_mask[0] == 1].tolist()
    comp = ro.completion_ids[0][ro.attention_mask[0] == 1].tolist()
    full = tok(render(tok, ep0["messages"], None, False), add_special_tokens=False)["input_ids"]
    assert prompt + comp == full[: len(prompt + comp)]
    assert tok.decode(full[len(prompt + comp) :]) == "\n"
    # the inserted tokens (mask 0) are exactly the tool turn, with the separator after <|im_end|> kept
    inserted = ro.completion_ids[0][(ro.completion_mask[0] == 0) & (ro.attention_mask[0] == 1)].tolist()
    assert tok.decode(inserted) == "\n<|im_start|>tool\n56088<|im_end|>\n<|im_start|>assistant\n"
    assert (ro.sampling_logps[0][ro.completion_mask[0] == 0] == 0).all()


def test_kv_extension_sees_the_same_logits_as_reprefilling(tiny):
    env = calc_env()
    turns = [
        [CALL, "56088"],
        ['<tool_call>{"name": "calculator", "arguments": {"expression": "1+"}}</tool_call>', "I do not know"],
    ]
    a, sa = run(tiny, env, turns, session="kv")
    b, sb = run(tiny, env, turns, session="reprefill")
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
    for e in sa.seen:
        assert len(sa.seen[e]) == len(sb.seen[e])
        for x, y in zip(sa.seen[e], sb.seen[e]):
            assert torch.allclose(x, y, atol=1e-4), (x - y).abs().max()


def test_trainer_logprobs_match_the_sampling_logprobs_on_sampled_tokens(tiny):
    ro, _ = run(tiny, calc_env(), [[CALL, "56088"], ["56088"]])
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    attn = torch.cat([ro.prompt_mask, ro.attention_mask], 1)
    with torch.no_grad():
        lp = grouped_completion_logprobs(tiny.model, ids, attn, ro.prompt_ids.shape[1], 2)
    m = ro.completion_mask.bool()
    assert torch.allclose(lp[m], ro.sampling_logps[m], atol=1e-4)


def test_environment_tokens_get_no_gradient(tiny):
    """Numerically: the loss's gradient w.r.t. every token's log-prob is 0 on inserted tokens, and the
    parameters' gradient does not change when the inserted tokens' log-probs are perturbed."""
    ro, _ = run(tiny, calc_env(), [[CALL, "56088"], [CALL, "1"]])
    loss = rlvr.create("loss", "grpo")
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    attn = torch.cat([ro.prompt_mask, ro.attention_mask], 1)
    logps = grouped_completion_logprobs(tiny.model, ids, attn, ro.prompt_ids.shape[1], 2)
    mask = ro.completion_mask.float()
    n_tok = int(loss.active_tokens(mask, ro.truncated))
    value, _ = loss(
        logps, None, None, torch.tensor([1.0, -1.0]), mask, ro.truncated, num_sequences=2, num_tokens=n_tok
    )
    (g,) = torch.autograd.grad(value, logps)
    env_tok = (ro.completion_mask == 0) & (ro.attention_mask == 1)
    assert env_tok.sum() > 10
    assert (g[env_tok] == 0).all() and (g[ro.completion_mask == 1] != 0).any()


def test_max_turns_ends_the_episode_truncated(tiny):
    ro, _ = run(tiny, calc_env(max_turns=2, max_tokens=1000), [[CALL, CALL, CALL], [CALL, "56088"]])
    ep0, ep1 = ro.episodes
    assert ep0["stop"] == "max_turns" and ep0["turns"] == 2 and ro.truncated[0]
    assert ep0["messages"][-1]["role"] == "assistant"  # the env saw the last turn, but answered no more
    assert ep1["stop"] == "env_done" and not ro.truncated[1]


def test_turn_without_end_token_and_token_budget_truncate(tiny):
    ro, _ = run(tiny, calc_env(), [["x" * 200], ["56088"]], max_new=16)
    assert ro.episodes[0]["stop"] == "max_new_tokens" and ro.truncated[0]
    assert int(ro.completion_mask[0].sum()) == 16 and ro.episodes[1]["stop"] == "env_done"
    ro, _ = run(tiny, calc_env(max_tokens=120), [[CALL, "x" * 300], ["56088"]], max_new=96)
    ep = ro.episodes[0]
    assert ep["stop"] == "max_tokens" and ro.truncated[0] and int(ro.attention_mask[0].sum()) == 120


def test_malformed_calls_come_back_as_tool_errors(tiny):
    bad = [
        '<tool_call>{"name": "calculator", "arguments": {"expression": 1+}}</tool_call>',
        '<tool_call>{"name": "rm", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>',
        '<tool_call>{"name": "calculator", "arguments": {"expression": "__import__(\'os\')"}}</tool_call>',
    ]
    ro, _ = run(tiny, calc_env(max_turns=6, max_tokens=2000), [bad + ["0"], ["0"]], max_new=100)
    tools = [m["content"] for m in ro.episodes[0]["messages"] if m["role"] == "tool"]
    assert len(tools) == 4 and all(t.startswith("error: ") for t in tools)
    assert "invalid JSON" in tools[0] and "unknown tool 'rm'" in tools[1] and "bad arguments" in tools[2]
    assert "unsupported expression" in tools[3]
    assert ro.episodes[0]["tool_errors"] == 4 and ro.episodes[0]["stop"] == "env_done"


class SlowEnv(ToolEnv):
    def __init__(self, cfg: EnvConfig) -> None:
        def wait(seconds: float) -> str:
            """Sleep.

            Args:
                seconds: how long
            """
            time.sleep(seconds)
            return "woke"

        super().__init__(cfg, [wait])

    def first_messages(self, row):
        return [{"role": "user", "content": "wait"}]


def test_tool_timeout_is_a_tool_error(tiny):
    env = SlowEnv(EnvConfig(tool_timeout=0.2, tool_format="rlvr"))
    call = '<tool_call>{"name": "wait", "arguments": {"seconds": 3}}</tool_call>'
    fast = '<tool_call>{"name": "wait", "arguments": {"seconds": 0}}</tool_call>'
    t0 = time.perf_counter()
    ro, _ = run(tiny, env, [[call, "done"], [fast, "done"]])
    assert time.perf_counter() - t0 < 2.5
    assert ro.episodes[0]["messages"][3]["content"] == "error: tool 'wait' timed out after 0.2 s"
    assert ro.episodes[1]["messages"][3]["content"] == "woke"


def test_episodes_do_not_depend_on_batch_neighbours(tiny):
    """Real sampling: an episode's tokens are a function of its seed only (resume / 1-vs-2-process property)."""
    engine = rlvr.create("engine", "hf", max_new_tokens=12)
    env = rlvr.create("env", "guess", max_turns=3)
    rows = [
        {"question": "Guess 1-20", "answer": 7, "low": 1, "high": 20},
        {"question": "Guess 1-20!", "answer": 3, "low": 1, "high": 20},
    ]
    both = engine.generate_episodes(tiny, env, rows, 2, [11, 12])
    alone = engine.generate_episodes(tiny, env, rows[1:], 2, [12])
    for i in range(2):
        a, b = both.completion_ids[2 + i], alone.completion_ids[i]
        k = int(both.attention_mask[2 + i].sum())
        assert k == int(alone.attention_mask[i].sum()) and torch.equal(a[:k], b[:k])
    stats = EpisodeStats()
    engine.generate_episodes(tiny, env, rows, 2, [11, 12], stats=stats)
    assert stats.generation > 0 and stats.env >= 0


def test_trainer_with_env_writes_whole_trajectories(tmp_path):
    cfg = rlvr.compose(
        [
            "model=tiny",
            "env=calculator",
            "task=multiply3",
            "reward=[calculator_correct,tool_use]",
            "trainer.max_steps=1",
            "trainer.prompts_per_step=2",
            "trainer.num_generations=2",
            "engine.max_new_tokens=16",
            "engine.max_prompt_length=1024",
            "trainer.eval_steps=1",
            "trainer.eval_samples=2",
            "trainer.progress=false",
            "logger=[jsonl]",
        ]
    )
    trainer = rlvr.Trainer(cfg, run_dir=tmp_path)
    metrics = trainer.train()
    assert "eval/tool_use_rate" in metrics and metrics["eval/num_prompts"] == 2
    line = json.loads((tmp_path / "completions.jsonl").read_text().splitlines()[0])
    sample = line["samples"][0] if "samples" in line else line
    assert sample["episode"]["messages"][0]["role"] == "system"


def test_unknown_env_fails_before_the_model_loads():
    with pytest.raises(Exception, match="calculator"):
        rlvr.create("env", "calculater")
    with pytest.raises(ValueError, match="max_turns"):
        rlvr.create("env", "calculator", max_turns=0)


class Killed(Exception):
    pass


def test_resume_killed_mid_episode_is_bit_identical(tmp_path):
    """A run that dies inside an episode (the env raises on its N-th step, during training step 3) and resumes
    from its step-2 checkpoint ends with exactly the weights and metrics of an uninterrupted run."""
    from dataclasses import dataclass

    from rlvr.plugins.envs.guess import GuessEnv, GuessEnvConfig

    calls = {"n": 0, "die_at": 0}

    @dataclass
    class CrashConfig(GuessEnvConfig):
        pass

    class CrashEnv(GuessEnv):
        def step(self, state, message):
            calls["n"] += 1
            if calls["die_at"] and calls["n"] == calls["die_at"]:
                raise Killed
            return super().step(state, message)

    rlvr.add_plugin("env", rlvr.PluginSpec("crash_guess", CrashEnv, CrashConfig))
    over = [
        "model=tiny",
        "env=crash_guess",
        "env.max_turns=3",
        "task=guess",
        "reward=[guess_valid,guess_solved]",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
        "trainer.prompts_per_step=2",
        "trainer.num_generations=2",
        "trainer.lr=1e-3",
        "engine.max_new_tokens=6",
        "trainer.eval_steps=0",
        "trainer.progress=false",
        "logger=[jsonl]",
    ]

    def trainer(d):
        t = rlvr.Trainer(rlvr.compose(over), run_dir=d)
        end_turns_often(t)
        return t

    trainer(tmp_path / "a").train()
    per_step = calls["n"] / 4
    assert per_step >= 4
    calls["n"], calls["die_at"] = 0, int(per_step * 2.5)  # inside step 3 (a step's env calls vary a little)
    with pytest.raises(Killed):
        trainer(tmp_path / "b").train()
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "b" / "checkpoints" / "checkpoint-4").is_dir()
    calls["die_at"] = 0
    trainer(tmp_path / "b").train()
    from tests.test_resume import assert_same_weights

    assert_same_weights(tmp_path / "a" / "final", tmp_path / "b" / "final")

    def rows(d):
        keep = lambda k: not any(w in k for w in ("time", "seconds", "memory/")) and not k.endswith("per_s")
        return [
            {k: v for k, v in json.loads(x).items() if keep(k)}
            for x in (d / "metrics.jsonl").read_text().split("\n")
            if x
        ]

    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert a[-2:] == b[-2:] and len(a) == 4
