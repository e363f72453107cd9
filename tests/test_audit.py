"""``rlvr audit``: probes, Wilson intervals, and the verdicts on a hackable and a robust reward."""

from __future__ import annotations

import json
import math

import pytest

from rlvr.commands.audit import audit, load_run, make_probes, parse_thresholds, wilson, wrong_answer
from tests.conftest import TINY, run_cli

QUESTIONS = [
    ("Tom has 3 bags of 4 apples. How many apples?", "12"),
    ("What is 7 + 8?", "15"),
    ("A pen costs 2 dollars. How much do 9 pens cost?", "18"),
    ("What is 30 / 6?", "5"),
]


def soft(reasoning: str, answer: str) -> str:
    """The GSM8K layout that gsm8k_soft_format accepts (not the strict one: no newlines inside the tags)."""
    return f"<reasoning>{reasoning}</reasoning> <answer>{answer}</answer>"


def write_run(path, completions, rewards):
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for step, (q, ref) in enumerate(QUESTIONS, 1):
        for text in completions(ref):
            lines.append(
                json.dumps(
                    {
                        "step": step,
                        "prompt": q,
                        "completion": text,
                        "answer": ref,
                        "row": {"question": q, "answer": ref},
                        "rewards": {},
                    }
                )
            )
    (path / "completions.jsonl").write_text("\n".join(lines) + "\n")
    config = {"task": {"name": "gsm8k", "answer_column": "answer"}, "reward": rewards, "trainer": {}}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_wilson_interval_hand_values():
    lo, hi = wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    z2 = 1.959963984540054**2
    assert wilson(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    assert wilson(10, 10) == (pytest.approx(10 / (10 + z2)), pytest.approx(1.0))
    assert wilson(0, 0) == (0.0, 1.0)


def test_probes_of_a_completion():
    probes = make_probes("<reasoning>3 times 4</reasoning>\n<answer>13</answer>", "12")
    assert probes == {
        "right_in_place": "<reasoning>3 times 4</reasoning>\n<answer>12</answer>",
        "truncated": "<reasoning>3 times 4</reasoning>\n<answer>",
        "format_wrong_answer": "<reasoning>3 times 4</reasoning>\n<answer>13</answer>",
        "wrong_place": "<reasoning>3 times 12 4</reasoning>\n<answer>13</answer>",
        "answer_only": "12",
    }
    no_answer = make_probes("I am not sure", "7")  # no final answer: one is appended first
    assert no_answer["right_in_place"] == "I am not sure\nThe answer is 7."
    assert no_answer["truncated"] == "I am not sure\nThe answer is "
    assert no_answer["format_wrong_answer"] == "I am not sure\nThe answer is 8."
    assert wrong_answer("2.5") == "3.5" and wrong_answer("Paris") == "none of the above"
    assert parse_thresholds("a=0.5, b=-2") == {"a": 0.5, "b": -2.0}
    with pytest.raises(ValueError, match="name=number"):
        parse_thresholds("a")


def test_format_only_reward_is_flagged_and_correctness_reward_is_not(tmp_path):
    run = write_run(
        tmp_path / "run",
        lambda ref: [soft("I worked it out.", ref), soft("I guessed.", "99")],
        {
            "gsm8k_soft_format": {"name": "gsm8k_soft_format", "weight": 0.5},
            "gsm8k_correct": {"name": "gsm8k_correct", "weight": 1.0},
            "gsm8k_strict_format": {"name": "gsm8k_strict_format"},
        },
    )
    result, text = audit(run)
    by = {r.name: r for r in result.rewards}
    assert result.samples == 8 and result.right_logged == 4 and result.wrong_logged == 4
    hack = by["gsm8k_soft_format"]  # pays the layout whatever the answer
    assert hack.probes["format_wrong_answer"] == (8, 8) and hack.probes["wrong_place"] == (8, 8)
    assert hack.probes["truncated"] == (0, 8)  # the cut removes </answer>
    assert (hack.fp, hack.fp_n) == (16, 24) and any("should fail" in f for f in hack.flags)
    assert hack.logged_wrong_paid == (4, 4)
    good = by["gsm8k_correct"]
    assert (good.fp, good.fp_n) == (0, 24) and (good.fn, good.fn_n) == (0, 12) and good.flags == []
    assert good.probes["right_in_place"] == (8, 8) and good.probes["answer_only"] == (0, 8)  # needs the tags
    strict = by["gsm8k_strict_format"]  # never paid here: the completions are not in the strict layout
    assert any("same score" in f for f in strict.flags)
    assert "gsm8k_soft_format  (pays above 0.25)  FLAGGED: pays for probes that should fail" in text
    assert "gsm8k_correct  (pays above 1)  ok" in text
    saved = json.loads((run / "audit.json").read_text())
    assert saved["rewards"]["gsm8k_soft_format"]["false_positive"]["rate"] == pytest.approx(16 / 24)
    lo, hi = saved["rewards"]["gsm8k_soft_format"]["false_positive"]["ci95"]
    assert (lo, hi) == (pytest.approx(wilson(16, 24)[0]), pytest.approx(wilson(16, 24)[1]))
    page = (run / "audit.html").read_text()
    assert "gsm8k_soft_format" in page and "&lt;answer&gt;13&lt;/answer&gt;" in page  # an escaped paid probe


def test_false_negatives_and_thresholds(tmp_path):
    run = write_run(
        tmp_path / "run",
        lambda ref: [soft("ok", ref), soft("ok", ref + "0")],
        {"gsm8k_correct": {"name": "gsm8k_correct"}},
    )
    result, _ = audit(run, thresholds={"gsm8k_correct": 5.0})  # a pass level no score reaches: every right is missed
    ra = result.rewards[0]
    assert (ra.fn, ra.fn_n) == (12, 12) and any("misses right answers" in f for f in ra.flags)
    result, _ = audit(run, rewards=["math_answer"], verifiers=["math_answer"], last=2, output=tmp_path / "out")
    assert result.samples == 4 and result.rewards[0].name == "math_answer"
    assert (tmp_path / "out" / "audit.html").is_file()


def test_bad_inputs_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run directory nor a completions jsonl"):
        audit(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no completions.jsonl"):
        audit(tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"step": 1, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="no 'completion' field"):
        load_run(bad)
    ok = tmp_path / "c.jsonl"
    ok.write_text(json.dumps({"step": 1, "prompt": "p", "completion": "12", "answer": "12"}) + "\n")
    with pytest.raises(ValueError, match="--rewards"):
        audit(ok)  # no config.json beside it: the rewards must be named
    result, _ = audit(ok, rewards=["arithmetic"])
    assert result.samples == 1 and result.right_logged == 1 and not math.isnan(result.rewards[0].threshold)


HACK = '''
def answer_phrase(completions, **_):
    """Pays for the phrase "The answer is" alone: a reward a policy can satisfy without solving anything."""
    return [1.0 if "The answer is" in c else 0.0 for c in completions]
'''


def test_cli_audit_of_a_real_run_flags_the_hackable_reward(tmp_path):
    (tmp_path / "hack.py").write_text(HACK)
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        *TINY,
        "trainer.max_steps=1",
        "trainer.log_completions=4",
        "reward=[arithmetic,function]",
        "reward.function.path=hack:answer_phrase",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("audit", str(run_dir), "--strict", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert "function  (pays above 0.5)  FLAGGED: pays for probes that should fail" in proc.stdout
    assert "arithmetic  (pays above 0)  ok" in proc.stdout
    assert (run_dir / "audit.html").is_file()
    assert run_cli("audit", str(run_dir), "--rewards", "arithmetic", "--strict", cwd=tmp_path).returncode == 0
    proc = run_cli("audit", str(run_dir), "--max-fpp", "1")
    assert proc.returncode == 2 and "Did you mean --max-fp?" in proc.stderr
