"""`rlvr show` and `rlvr report` on multi-turn runs (env=...): turns, tool calls, tool results and errors.

The run is a real `rlvr train model=tiny env=calculator ...` through the CLI, in this process, with the hf engine's
token sampler replaced by a script (the random tiny model never writes a tool call): episode j of each group writes
a valid calculator call (j even) or a malformed one (j odd), then an answer. Everything else — the environment
running the calls, rewards, metrics, completions.jsonl — is the real pipeline. Single-turn runs are covered by
tests/test_report.py (their show table and report files are unchanged).
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch

from rlvr.plugins.engines.hf import HFEngine
from tests.conftest import run_cli
from tests.test_bad_input import cli  # noqa: F401 - the in-process CLI fixture

GOOD = '<tool_call>{"name": "calculator", "arguments": {"expression": "123*456"}}</tool_call>'
BAD = '<tool_call>{"name": "calculator", "arguments": {"expression": 1+}}</tool_call>'
SCRIPTS = [[GOOD, "The answer is 56088."], [BAD, "I give up."]]
TRAIN = [
    "train",
    "model=tiny",
    "env=calculator",
    "task=multiply3",
    "reward=[calculator_correct,tool_use]",
    "engine.max_prompt_length=1024",
    "engine.max_new_tokens=96",
    "env.max_tokens=400",
    "trainer.max_steps=2",
    "trainer.prompts_per_step=2",
    "trainer.num_generations=2",
    "trainer.eval_steps=2",
    "trainer.eval_samples=2",
    "trainer.log_completions=4",
    "trainer.progress=false",
    "trainer.threads=1",
    "logger=[jsonl]",
]


def scripted_sample(tokenizer):
    """A drop-in for HFEngine.sample: episode j (its generator's seed is group_seed·1000 + j) writes SCRIPTS[j % 2],
    each turn followed by <|im_end|>; log-probs are the model's."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    queues: dict[int, list[int]] = {}

    def sample(self, logits, gens, greedy):
        out = []
        for g in gens:
            s = g.initial_seed()
            if s not in queues:
                turns = SCRIPTS[(s % 1000) % 2]
                queues[s] = [
                    t for turn in turns for t in tokenizer(turn, add_special_tokens=False)["input_ids"] + [eos]
                ]
            out.append(queues[s].pop(0) if queues[s] else eos)
        tokens = torch.tensor(out, device=logits.device)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)

    return sample


@pytest.fixture(scope="module")
def env_run(tmp_path_factory):
    import rlvr
    from rlvr.cli import main

    d = tmp_path_factory.mktemp("episodes") / "run"
    tok = rlvr.create("model", "tiny").tokenizer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HFEngine, "sample", scripted_sample(tok))
        mp.setattr(sys, "argv", ["rlvr"])
        with pytest.raises(SystemExit) as exc:
            main([*TRAIN, f"hydra.run.dir={d}"])
    assert not exc.value.code, exc.value
    return d


def test_completions_hold_scripted_tool_episodes(env_run):
    rows = [json.loads(x) for x in (env_run / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 4 + [2] * 4
    eps = [r["episode"] for r in rows]
    assert eps[0]["tool_calls"] == 1 and eps[0]["tool_errors"] == 0 and eps[0]["stop"] == "env_done"
    assert eps[1]["tool_errors"] == 1  # the malformed call came back as an error
    metrics = [json.loads(x) for x in (env_run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "env/turns/mean" in m]
    assert train and all(m["env/tool_error_rate"] == 0.5 and m["env/turns/mean"] == 2.0 for m in train)
    assert all(m["env/generation_seconds"] > 0 and m["env/env_seconds"] > 0 for m in train)


def test_show_renders_each_turn(cli, env_run):  # noqa: F811
    code, out, err = cli("show", str(env_run), "--width", "110")
    assert code == 0, err
    assert out.startswith("step 2 · reward") and "turns/episode 2.00" in out and "tool errors 50 %" in out
    assert all(len(line) <= 110 for line in out.splitlines())
    labelled = [line.split("|", 1) for line in out.splitlines() if "|" in line and line.startswith("  ")]
    labels = [a.strip() for a, _ in labelled if a.strip()]
    assert labels.count("assistant") == 8 and labels.count("user") == 4  # 4 episodes of 2 turns
    # the valid call: its name and arguments, then its result
    calls = [b for a, b in labelled if a.strip() == "tool call"]
    assert calls and all('calculator {"expression": "123*456"}' in c for c in calls)
    results = [b.strip() for a, b in labelled if a.strip() == "tool"]
    assert results and all(r == "calculator: 56088" for r in results)
    # the malformed call: flagged as a bad call, and its result shown as a tool error
    assert any("not a valid call" in b for a, b in labelled if a.strip() == "bad call")
    errors = [b for a, b in labelled if a.strip() == "tool error"]
    assert len(errors) == 2 and all("error: " in e and "invalid JSON" in e for e in errors)
    blocks = [b for b in re.split(r"^-{20,}$", out, flags=re.M) if b.strip().startswith("#")]
    heads = []  # each sample's head line (wrapped: continued on indented lines) up to its first message
    for b in blocks:
        lines = b.strip("\n").splitlines()
        first = next(k for k, line in enumerate(lines) if " | " in line)
        heads.append(" ".join(line.strip() for line in lines[:first]))
    assert len(heads) == 4 and all("stop env_done" in h and "2 turns" in h for h in heads)
    assert "1 tool call, 0 errors" in heads[0] and "1 tool call, 1 error" in heads[1]
    assert "calculator_correct" in heads[0] and "tool_use +1.00" in heads[0] and "tool_use +0.50" in heads[1]
    assert "<|im_start|>" not in out and "<tool_call>" in out  # no template markup; the model's own text kept
    code, full, _ = cli("show", str(env_run), "--full", "--step", "1")
    assert code == 0 and full.startswith("step 1") and "calculator" in full and len(full) > len(out)


def test_show_neutralises_control_and_bidi_characters_in_episodes(tmp_path):
    episode = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "call \u202eevil\u202c"},
            {"role": "tool", "name": "calc\x1b[31m", "content": "res\x07ult \u2066x\u2069"},
            {"role": "assistant", "content": "cut here", "truncated": True},
        ],
        "turns": 2,
        "stop": "max_new_tokens",
        "truncated": True,
        "tool_calls": 1,
        "tool_errors": 0,
        "infos": [{"tool_calls": 1, "tool_errors": 0, "calls": [{"name": "calc\u202e", "arguments": {"a": "\x1b"}}]}],
    }
    rec = {"step": 1, "prompt": "p", "completion": "c", "answer": "a", "rewards": {"r": 0.0}, "advantage": 0.0}
    (tmp_path / "completions.jsonl").write_text(json.dumps({**rec, "episode": episode}) + "\n")
    proc = run_cli("show", str(tmp_path), "--width", "200")
    assert proc.returncode == 0, proc.stderr
    assert not re.search("[\u202a-\u202e\u2066-\u2069\x07\x1b]", proc.stdout)
    assert "<U+202E>" in proc.stdout and "<U+2066>" in proc.stdout and "res·ult" in proc.stdout
    assert "cut here [cut: max_new_tokens]" in proc.stdout and "stop max_new_tokens (truncated)" in proc.stdout


def test_report_plots_turns_tools_and_time(cli, env_run, tmp_path):  # noqa: F811
    out_dir = tmp_path / "report"
    code, out, err = cli("report", str(env_run), "--output", str(out_dir))
    assert code == 0, err
    pngs = {p.stem for p in out_dir.glob("*.png")}
    assert {"episodes", "tools", "env_time", "reward", "step_time"} <= pngs, sorted(pngs)
    page = (out_dir / "report.html").read_text()
    for key in ("env/turns/mean", "env/tool_calls/mean", "env/tool_error_rate", "env/env_seconds"):
        assert key in page, key  # the summary table
    assert "Turns and tool calls per episode" in page and "generating vs in the environment" in page
    assert "calculator: 56088" in page and "tool error" in page and "invalid JSON" in page  # sample episodes


def test_sweep_report_overlays_episode_curves(cli, env_run, tmp_path):  # noqa: F811
    import shutil

    sweep = tmp_path / "sweep"
    for name in ("0", "1"):
        shutil.copytree(env_run, sweep / name)
    code, out, err = cli("report", str(sweep))
    assert code == 0, err
    pngs = {p.stem for p in (sweep / "report").glob("*.png")}
    assert {"episodes", "tools"} <= pngs, sorted(pngs)
    assert "Multi-turn runs: turns and tool calls per episode" in (sweep / "report" / "report.html").read_text()


def test_environment_feedback_and_cut_turns_are_labelled():
    from rlvr.commands.show import episode_lines

    episode = {  # the guess game: user-role feedback after the first turn; the last turn cut by max_turns
        "messages": [
            {"role": "user", "content": "Guess 1-20"},
            {"role": "assistant", "content": "10"},
            {"role": "user", "content": "Higher."},
            {"role": "assistant", "content": "15"},
            {"role": "assistant", "content": "1", "truncated": True},
        ],
        "stop": "max_new_tokens",
        "infos": [{"valid": True}, {"valid": True}],
    }
    assert episode_lines(episode) == [
        ("user", "Guess 1-20"),
        ("assistant", "10"),
        ("env", "Higher."),
        ("assistant", "15"),
        ("assistant", "1 [cut: max_new_tokens]"),
    ]
