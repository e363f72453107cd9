"""Held-out evaluation: pass@k / maj@k / confidence intervals by hand, evaluate() on a scripted engine,
and ``rlvr eval RUN_DIR`` through the CLI on a tiny-model run of a non-numeric (capitals) task."""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import comb

import pytest

from rlvr.core.evaluate import (
    bootstrap_interval,
    evaluate,
    k_values,
    majority_correct,
    pass_at_k,
    summarise,
    wilson_interval,
)
from rlvr.core.task import Task, TaskConfig
from tests.conftest import TINY, run_cli

# --------------------------------------------------------------------------- statistics by hand


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 0.4),  # = c / n
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # fewer than k wrong samples: some k-subset always holds a correct one
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),
        (1, 1, 1, 1.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula_and_rejects_bad_k():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_majority_vote():
    assert majority_correct(["3", "4", "3", None], [True, False, True, False]) is True
    assert majority_correct(["4", "4", "3"], [False, False, True]) is False
    assert majority_correct(["3", "4"], [True, False]) is True  # tie: the answer seen first
    assert majority_correct(["4", "3"], [False, True]) is False
    assert majority_correct([None, None], [False, False]) is False


def test_wilson_interval_published_values():
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [0.0, 0.25, 1.0, 0.5, 0.75, 0.0, 1.0, 0.5]
    lo, hi = bootstrap_interval(values, seed=3)
    assert (lo, hi) == bootstrap_interval(values, seed=3)
    assert lo < sum(values) / len(values) < hi and 0.0 <= lo and hi <= 1.0
    assert bootstrap_interval([1.0] * 5) == (1.0, 1.0)


def test_summarise_reports_every_k():
    assert k_values(1) == [1] and k_values(4) == [1, 2, 4] and k_values(6) == [1, 2, 4, 6]
    sampled = [[True, False, False, False], [False, False, False, False]]
    keys = [["7", "8", "8", "9"], ["1", "1", "2", None]]
    out = summarise([True, False], sampled, keys)
    assert out["eval/greedy_accuracy"] == 0.5 and out["eval/sampled_pass@1"] == pytest.approx(0.125)
    assert out["eval/pass@1"] == pytest.approx(0.125)
    assert out["eval/pass@2"] == pytest.approx((1 - comb(3, 2) / comb(4, 2)) / 2)
    assert out["eval/pass@4"] == pytest.approx(0.5)
    assert out["eval/maj@1"] == 0.5 and out["eval/maj@4"] == 0.0  # "8" outvotes the right "7"
    assert out["eval/sampled_pass@1_ci_low"] <= 0.125 <= out["eval/sampled_pass@1_ci_high"]


# --------------------------------------------------------------------------- evaluate() on a scripted engine


@dataclass
class _Out:
    completions: list


class ScriptedEngine:
    """Greedy: the prompt's 'greedy' line; sampled: its 'samples' (the prompt text is the row's question)."""

    def __init__(self, script):
        self.script = script

    def generate(self, policy, prompts, n, seeds, greedy=False):
        if greedy:
            return _Out([self.script[p]["greedy"] for p in prompts])
        return _Out([s for p in prompts for s in self.script[p]["samples"][:n]])


class _Policy:
    tokenizer = None


def test_a_task_with_its_own_is_correct_keeps_it_unless_correct_is_set():
    rows = [{"question": "q", "answer": "yes"}]
    task = Task("own", rows, rows, TaskConfig(chat=False), is_correct=lambda c, row: "yes" in c.lower())
    engine = ScriptedEngine({"q": {"greedy": "Yes, indeed", "samples": []}})
    assert evaluate(_Policy(), task, engine, num_samples=0)["eval/greedy_accuracy"] == 1.0
    task.config.correct = "exact_match"
    assert evaluate(_Policy(), task, engine, num_samples=0)["eval/greedy_accuracy"] == 0.0


def test_evaluate_with_any_verifier_writes_records():
    rows = [{"question": "France?", "answer": "Paris"}, {"question": "Peru?", "answer": "Lima"}]
    task = Task("capitals", rows, rows, TaskConfig(chat=False, correct="exact_match"))
    engine = ScriptedEngine(
        {
            "France?": {"greedy": "Paris", "samples": ["The answer is Paris.", "Lyon", "paris", "Nice"]},
            "Peru?": {"greedy": "Cusco", "samples": ["Cusco", "Cusco", "Lima", "Quito"]},
        }
    )
    records: list = []
    out = evaluate(_Policy(), task, engine, num_samples=4, records=records)
    assert out["eval/greedy_accuracy"] == 0.5
    assert out["eval/sampled_pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert out["eval/pass@4"] == 1.0 and out["eval/maj@4"] == 0.5  # Paris wins on France, Cusco on Peru
    assert out["eval/maj@1"] == 0.5 and out["eval/pass@1"] == out["eval/sampled_pass@1"]
    assert len(records) == 2 + 8 and {r["kind"] for r in records} == {"greedy", "sampled"}
    first = records[2]
    assert first["kind"] == "sampled" and first["prompt_index"] == 0 and first["correct"] is True
    # judged by math_answer instead: only answers behind a marker count ("The answer is Paris."), bare "Lima" does not
    task.config.correct = "math_answer"
    assert evaluate(_Policy(), task, engine, num_samples=4)["eval/pass@4"] == 0.5


# --------------------------------------------------------------------------- the CLI on a real run directory

CAPITALS = [
    ("France", "Paris"),
    ("Peru", "Lima"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Chile", "Santiago"),
    ("Egypt", "Cairo"),
    ("Spain", "Madrid"),
    ("Italy", "Rome"),
]


def test_eval_run_dir_reuses_task_model_and_check_and_judges_text_answers(tmp_path):
    data = tmp_path / "capitals.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is the capital of {c}?", "answer": a}) + "\n" for c, a in CAPITALS)
    )
    run = tmp_path / "run"
    proc = run_cli(
        "train",
        *TINY,
        "task=jsonl",
        f"task.train_path={data}",
        "task.eval_fraction=0.25",
        "trainer.max_steps=1",
        "engine.max_new_tokens=4",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = tmp_path / "samples.jsonl"
    proc = run_cli("eval", str(run), "num_samples=2", "--samples-out", str(samples), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["task"] == "jsonl" and result["correct"] == "exact_match" and result["run_dir"] == str(run)
    assert result["model"] == str(run / "final") and result["eval/num_prompts"] == 2.0  # the run's held-out split
    assert {"eval/pass@1", "eval/pass@2", "eval/maj@2", "eval/sampled_pass@1_ci_low"} <= set(result)
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(records) == 2 * (1 + 2) and {r["reference"] for r in records} <= {a for _, a in CAPITALS}
    # a held-out file whose first answer is what the model says: accuracy is no longer stuck at 0
    from rlvr.core.answers import exact_answer

    greedy = [r for r in records if r["kind"] == "greedy"]
    held = tmp_path / "held.jsonl"
    first_q = greedy[0]["prompt"]
    question = next(f"What is the capital of {c}?" for c, _ in CAPITALS if f"capital of {c}?" in first_q)
    other = next(f"What is the capital of {c}?" for c, _ in CAPITALS if f"capital of {c}?" not in first_q)
    held.write_text(
        json.dumps({"question": question, "answer": exact_answer(greedy[0]["completion"]).strip() or "(empty)"})
        + "\n"
        + json.dumps({"question": other, "answer": "Atlantis"})
        + "\n"
    )
    proc = run_cli("eval", str(run), "num_samples=0", f"task.eval_path={held}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["eval/num_prompts"] == 2.0
    if exact_answer(greedy[0]["completion"]).strip():
        assert result["eval/greedy_accuracy"] == 0.5
    # overrides still apply: the same run judged by math_answer
    proc = run_cli("eval", str(run / "final"), "num_samples=0", "task.correct=math_answer", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["correct"] == "math_answer"


def test_eval_of_a_directory_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "tiny"}, "task": {"name": "arithmetic"}}))
    proc = run_cli("eval", str(tmp_path))
    assert proc.returncode != 0 and "neither final/ nor a complete checkpoint" in proc.stderr
