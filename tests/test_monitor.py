"""The reward-hacking monitor (rlvr/core/monitor.py): hand-computed values of every signal, thresholds and
warnings, check resolution, and a tiny CLI run whose metrics.jsonl carries the audit/ keys."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from rlvr.core.monitor import (
    Monitor,
    Thresholds,
    audit_metrics,
    crossed,
    duplicate_fraction,
    json_row,
    resolve_checks,
    within_group_corr,
)
from rlvr.core.rewards import RewardFn
from tests.conftest import TINY, run_cli

NAN = float("nan")
# two groups of 4; rewards "format" (weight 1) and "correct" (weight 2): total = format + 2·correct
COMPLETIONS = ["a", "a ", "b", "c", "d", "e", "f", "g"]
TABLE = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 0], [1, NAN], [1, 1], [0, 1], [1, 1]], dtype=torch.float32)
# totals: 3 3 1 0 | 1 3 2 3; group means 1.75 and 2.25
VERDICT = {"a": True, "a ": True, "b": False, "c": False, "d": False, "e": False, "f": True, "g": None}
ROWS = [{"answer": str(i // 4)} for i in range(8)]


def oracle(completions, **_):
    return [VERDICT[c] for c in completions]


def metrics(**kw):
    args = dict(checks={"oracle": oracle}, prompts=["p"] * 8)
    args.update(kw)
    return audit_metrics(COMPLETIONS, TABLE, ["format", "correct"], [1.0, 2.0], 4, ROWS, **args)


def test_every_signal_hand_computed():
    m = metrics()
    assert m["audit/duplicate_frac"] == pytest.approx(1 / 8)  # "a" and "a " are the same after strip
    assert m["audit/completion_chars/mean"] == pytest.approx(9 / 8)
    # lengths − group mean: (-.25 .75 -.25 -.25 | 0 0 0 0); totals − group mean: (1.25 1.25 -.75 -1.75 | ...)
    assert m["audit/length_reward_corr"] == pytest.approx(1.25 / math.sqrt(0.75 * 9.5))
    # judged: 7 (g has no verdict); pass a, a , f (totals 3 3 2: mean 8/3); fail b c d e (totals 1 0 1 3)
    assert m["audit/check/oracle/pass_rate"] == pytest.approx(3 / 7)
    assert m["audit/check/oracle/fail_paid_as_pass_frac"] == pytest.approx(1 / 7)  # e: 3 >= 8/3
    assert m["audit/check/oracle/fail_rewarded_frac"] == pytest.approx(1 / 7)  # e: 3 > 2.25
    assert m["audit/check/oracle/reward_gap"] == pytest.approx(8 / 3 - 5 / 4)
    assert m["audit/format/pass_gap"] == pytest.approx(2 / 3 - 3 / 4)  # format pays pass and fail alike
    assert m["audit/correct/pass_gap"] == pytest.approx(1 - 1 / 3)  # d's None is left out
    assert m["audit/format_reward/mean"] == pytest.approx(6 / 8)
    assert m["audit/content_reward/mean"] == pytest.approx(2 * 5 / 8)
    assert all(k.startswith("audit/") for k in m)


def test_format_rewards_by_config_and_no_check():
    m = metrics(checks=None, format_rewards=["correct"])
    assert not any(k.startswith("audit/check/") or k.endswith("pass_gap") for k in m)
    assert m["audit/format_reward/mean"] == pytest.approx(2 * 5 / 8)
    assert m["audit/content_reward/mean"] == pytest.approx(6 / 8)
    assert "audit/format_reward/mean" not in metrics(format_rewards=[])


def test_format_only_reward_is_what_the_signal_catches():
    """A reward that pays the format alone: every wrong completion is paid like a right one."""
    completions = ["<answer>1</answer>", "<answer>2</answer>", "<answer>3</answer>", "no tags"]
    table = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    right = {"<answer>1</answer>": True}
    m = audit_metrics(
        completions,
        table,
        ["tags"],
        [1.0],
        4,
        [{}] * 4,
        checks={"v": lambda cs, **_: [right.get(c, False) for c in cs]},
    )
    assert m["audit/check/v/fail_paid_as_pass_frac"] == pytest.approx(2 / 4)
    assert m["audit/check/v/fail_rewarded_frac"] == pytest.approx(2 / 4)  # 1 > mean 0.75
    assert m["audit/tags/pass_gap"] == pytest.approx(1 - 2 / 3)  # failing: 1, 1, 0
    robust = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    m = audit_metrics(
        completions,
        robust,
        ["tags"],
        [1.0],
        4,
        [{}] * 4,
        checks={"v": lambda cs, **_: [right.get(c, False) for c in cs]},
    )
    assert m["audit/check/v/fail_paid_as_pass_frac"] == 0.0 and m["audit/check/v/fail_rewarded_frac"] == 0.0


def test_undefined_signals_are_left_out():
    table = torch.zeros((4, 1))
    m = audit_metrics(["x"] * 4, table, ["r"], [1.0], 2, [{}] * 4, checks={"v": lambda cs, **_: [False] * len(cs)})
    assert m["audit/duplicate_frac"] == 1 / 2 and m["audit/check/v/pass_rate"] == 0.0
    assert "audit/check/v/fail_paid_as_pass_frac" not in m  # nothing passes: no "paid like a pass" level
    assert "audit/length_reward_corr" not in m and "audit/check/v/reward_gap" not in m
    assert all(math.isfinite(v) for v in m.values())


def test_helpers():
    assert duplicate_fraction(["x", "x", "x", "y", "z", "z"], 3) == pytest.approx(3 / 6)
    assert within_group_corr([1, 2, 10, 11], [1, 2, 5, 4], 2) == pytest.approx(0.0)  # +1 and −1 cancel
    assert within_group_corr([1, 1], [0, 5], 2) is None
    assert json_row({"a": 1, "b": object(), "c": [1, "x"], "d": float("nan")}) == {"a": 1, "c": [1, "x"]}


def test_bad_shapes_fail_with_a_message():
    with pytest.raises(ValueError, match="does not match 8 completions"):
        audit_metrics(COMPLETIONS, TABLE[:, :1], ["format", "correct"], [1.0, 2.0], 4, ROWS)
    with pytest.raises(ValueError, match="whole groups of 3"):
        audit_metrics(COMPLETIONS, TABLE, ["format", "correct"], [1.0, 2.0], 3, ROWS)


def test_a_check_that_raises_is_counted_not_fatal():
    def broken(completions, **_):
        raise RuntimeError("boom")

    with pytest.warns(RuntimeWarning, match="audit check 'broken' raised RuntimeError: boom"):
        m = metrics(checks={"broken": broken, "oracle": oracle})
    assert m["audit/check/broken/errors"] == 1.0 and "audit/check/oracle/pass_rate" in m


def test_thresholds_and_one_aggregated_warning_per_step():
    m = metrics()
    assert crossed(m, Thresholds(fail_paid_as_pass=0.2, duplicates=0.9)) == []
    lines = crossed(m, Thresholds(fail_paid_as_pass=0.1, duplicates=0.1, length_corr=0.4))
    assert len(lines) == 3 and "'oracle'" in lines[0] and "duplicate" in lines[1] and "length" in lines[2]

    def code(completions, **_):
        return [0.0] * len(completions)

    code.last_metrics = {"fail_closed": 2, "tests_run": 7, "note": "text is dropped"}
    zero = lambda c, **_: [0.0] * len(c)  # noqa: E731
    rewards = [RewardFn("format", zero), RewardFn("correct", zero, 2.0), RewardFn("code", code)]
    table = torch.cat([TABLE, torch.zeros(8, 1)], dim=1)
    mon = Monitor({"oracle": oracle}, 4, Thresholds(fail_paid_as_pass=0.1, duplicates=0.1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = mon(7, COMPLETIONS, table, rewards, ROWS, ["p"] * 8)
    assert len(caught) == 1  # one warning for the step, every crossed signal in it
    text = str(caught[0].message)
    assert text.startswith("step 7: possible reward hacking") and "oracle" in text and "code/fail_closed" in text
    assert out["audit/code/fail_closed"] == 2.0 and out["audit/code/tests_run"] == 7.0 and "audit/code/note" not in out
    quiet = Monitor({"oracle": oracle}, 4, Thresholds(fail_closed=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet(7, COMPLETIONS, table, rewards, ROWS)
    assert Monitor({}, 4, Thresholds(), enabled=False)(1, COMPLETIONS, table, rewards, ROWS) == {}


def test_code_exec_fail_closed_counts_are_forwarded_and_warned(tmp_path):
    """code_exec exposes executor.fail_closed_counts(); an always-equal hack is counted as unplain values."""
    import rlvr

    fn = rlvr.create("reward", "code_exec")
    hack = "```python\nclass E(int):\n    def __eq__(self, o): return True\ndef mystery(x): return E(0)\n```"
    honest = "```python\ndef mystery(x): return 2 * x + 1\n```"
    tests = "assert mystery(3) == 7\nassert mystery(1) == 3"
    scores = fn([honest, hack], tests=[tests, tests])
    assert scores[0] > scores[1]
    rewards = [RewardFn("code_exec", fn)]
    mon = Monitor({}, 2, Thresholds())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = mon(3, [honest, hack], torch.tensor([[scores[0]], [scores[1]]]), rewards, [{"tests": tests}] * 2)
    assert out["audit/code_exec/fail_closed/unplain_values"] >= 1
    assert out["audit/code_exec/fail_closed/violations"] == 0
    assert len(caught) == 1 and "code_exec/fail_closed/unplain_values" in str(caught[0].message)


def test_resolve_checks_through_the_registry():
    default = resolve_checks(None, "answer")
    assert list(default) == ["math_answer"]
    assert default["math_answer"](["so it is 12", "7"], answer=["12", "12"]) == [True, False]
    assert resolve_checks(None, None) == {} and resolve_checks([], "answer") == {}
    as_reward = resolve_checks(["arithmetic"], "answer")["arithmetic"]  # a reward: score > 0 is a pass
    assert as_reward(["3", "4", "no"], answer=[3, 3, 3]) == [True, False, False]
    with pytest.raises(ValueError, match="'math_answr' is neither a verifier nor a reward.*math_answer"):
        resolve_checks(["math_answr"], "answer")


def test_cli_run_logs_audit_metrics_and_rows(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train", *TINY, "trainer.max_steps=1", "trainer.audit_verifiers=[math_answer]", f"hydra.run.dir={run_dir}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    for key in (
        "audit/duplicate_frac",
        "audit/completion_chars/mean",
        "audit/check/math_answer/pass_rate",
        "audit/check/math_answer/fail_rewarded_frac",
    ):
        assert key in line, sorted(k for k in line if k.startswith("audit/"))
    sample = json.loads((run_dir / "completions.jsonl").read_text().splitlines()[0])
    assert set(sample["row"]) >= {"question", "answer"} and str(sample["row"]["answer"]) == sample["answer"]


def test_gathered_ranks_give_the_whole_batch_metrics():
    """Under torchrun each rank holds whole groups; gathering them gives the one-process metrics."""

    def code(completions, **_):
        return [0.0] * len(completions)

    code.last_metrics = {"fail_closed": 1}
    rewards = [RewardFn("format", code), RewardFn("correct", lambda c, **_: [0.0] * len(c), 2.0)]
    mon = Monitor({"oracle": oracle}, 4, Thresholds(fail_closed=-1))
    whole = mon(1, COMPLETIONS, TABLE, rewards, ROWS, ["p"] * 8)
    halves = [
        {
            "completions": COMPLETIONS[:4],
            "table": TABLE[:4],
            "rows": ROWS[:4],
            "prompts": ["p"] * 4,
            "extra": {"format": {"fail_closed": 1}},
        },
        {
            "completions": COMPLETIONS[4:],
            "table": TABLE[4:],
            "rows": ROWS[4:],
            "prompts": ["p"] * 4,
            "extra": {"format": {"fail_closed": 2}},
        },
    ]
    joined = mon(1, COMPLETIONS[:4], TABLE[:4], rewards, ROWS[:4], ["p"] * 4, gather=lambda obj: halves)
    assert joined.pop("audit/format/fail_closed") == 3.0  # counters summed over the ranks
    assert whole.pop("audit/format/fail_closed") == 1.0
    assert joined == pytest.approx(whole) and "audit/check/oracle/pass_rate" in joined
