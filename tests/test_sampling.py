"""Dynamic sampling (refill / skip) and the prompt curriculum (rlvr/core/sampling.py), and held-out intervals."""

from __future__ import annotations

import json
import math
import warnings
import zlib
from pathlib import Path

import pytest
import torch

import rlvr
from rlvr.core.rollout import Rollouts
from rlvr.core.sampling import (
    CurriculumSampler,
    concat_rollouts,
    curriculum_weight,
    informative_groups,
    refill_size,
    take_groups,
)
from tests.conftest import TINY

RUN = [*TINY, "trainer.prompts_per_step=4", "trainer.lr=1e-3", "trainer.warmup_steps=0"]


def answer_rule(informative_if):
    """A reward that varies within a group (a checksum of the completion: a random model's completions differ)
    only for rows whose answer passes the rule; other groups all score 1.0 (all agree)."""

    def reward(completions, answer, **_):
        return [
            float(zlib.crc32(c.encode()) % 1000) if informative_if(int(a)) else 1.0
            for c, a in zip(completions, answer)
        ]

    return reward


def run(tmp_path: Path, overrides: list[str], reward) -> tuple[rlvr.Trainer, list[dict]]:
    trainer = rlvr.Trainer(rlvr.compose([*RUN, *overrides]), rewards=[reward], run_dir=tmp_path)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return trainer, rows


def test_informative_groups_and_refill_size():
    total = torch.tensor([1.0, 1.0, 0.0, 3.0, 2.0, 2.0])
    assert informative_groups(total, 2).tolist() == [False, True, False]
    assert refill_size(needed=3, kept=0, generated=4, batch=4, world=1) == 4  # nothing informative yet: B
    assert refill_size(needed=3, kept=1, generated=4, batch=8, world=1) == 8  # ceil(3 / 0.25) = 12, capped at B
    assert refill_size(needed=1, kept=3, generated=4, batch=4, world=1) == 2  # ceil(1 / 0.75) = 2
    assert refill_size(needed=1, kept=3, generated=3, batch=4, world=2) == 2  # at least one prompt per process


def rollouts(P: int, T: int, groups: int, G: int, tag: int) -> Rollouts:
    n = groups * G
    return Rollouts(
        prompt_ids=torch.full((n, P), tag),
        prompt_mask=torch.ones(n, P, dtype=torch.long),
        completion_ids=torch.full((n, T), tag),
        completion_mask=torch.ones(n, T, dtype=torch.long),
        truncated=torch.zeros(n, dtype=torch.bool),
        group=torch.arange(groups).repeat_interleave(G),
        sampling_logps=torch.full((n, T), -1.0),
        prompts=[f"p{tag}"] * n,
        completions=[f"c{tag}"] * n,
        rows=[{"answer": tag}] * n,
    )


def test_concat_pads_prompts_left_and_completions_right_and_take_groups_reorders():
    ro = concat_rollouts([rollouts(2, 3, 1, 2, 7), rollouts(4, 1, 2, 2, 8)], pad_id=0)
    assert ro.prompt_ids.shape == (6, 4) and ro.completion_ids.shape == (6, 3)
    assert ro.prompt_ids[0].tolist() == [0, 0, 7, 7] and ro.prompt_mask[0].tolist() == [0, 0, 1, 1]
    assert ro.completion_ids[2].tolist() == [8, 0, 0] and ro.completion_mask[2].tolist() == [1, 0, 0]
    assert ro.sampling_logps[2].tolist() == [-1.0, 0.0, 0.0] and ro.group.tolist() == [0, 0, 1, 1, 2, 2]
    picked = take_groups(ro, [2, 0], 2)
    assert picked.prompts == ["p8", "p8", "p7", "p7"] and picked.group.tolist() == [0, 0, 1, 1]
    assert picked.completion_ids[:, 0].tolist() == [8, 8, 7, 7]


def test_curriculum_weights_by_hand_and_sampling_frequencies():
    assert [curriculum_weight(s, 0.25, 0.05) for s in range(4)] == [1.0, 0.25, 0.0625, 0.05]
    s = CurriculumSampler(4, seed=3, decay=0.5, min_weight=0.1)
    s.observe([0, 1, 1, 2, 2, 2, 3], [False, False, False, False, False, False, False])
    assert s.weights() == [0.5, 0.25, 0.125, 0.5]
    s.observe([3], [True])  # an informative group resets the streak
    assert s.weights() == [0.5, 0.25, 0.125, 1.0]
    s.observe([2, 2], [False, False])  # 0.5 ** 5 = 0.03125 is below the floor
    assert s.weights()[2] == 0.1
    counts = [0] * 4
    n = 6000
    for _ in range(n):
        counts[s.take(1)[0]] += 1
    expected = [w / sum(s.weights()) for w in s.weights()]  # 0.5/1.85, 0.25/1.85, 0.1/1.85, 1/1.85
    for c, p in zip(counts, expected):
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n), (counts, expected)
    batch = s.take(4)
    assert sorted(batch) == [0, 1, 2, 3]  # without replacement within a step
    fresh = CurriculumSampler(4, seed=3, decay=0.5, min_weight=0.1)
    fresh.load_state_dict(s.state_dict())
    assert fresh.take(3) == s.take(3)  # resumable: the same draws from the same state
    with pytest.raises(ValueError, match="curriculum_min_weight"):
        CurriculumSampler(4, 0, 0.5, 0.0)


def test_refill_reaches_b_informative_groups(tmp_path):
    _, rows = run(
        tmp_path,
        ["trainer.max_steps=2", "trainer.dynamic_sampling=refill", "trainer.dynamic_max_rounds=8"],
        answer_rule(lambda a: a % 2 == 1),
    )
    for m in rows:
        assert m["dynamic/groups_trained"] == 4 and m["dynamic/short_groups"] == 0
        assert m["frac_reward_zero_std"] == 0.0 and m["dynamic/update_skipped"] == 0.0
        assert m["dynamic/prompts_consumed"] >= 4 + m["dynamic/groups_filtered"]
    assert sum(m["dynamic/refill_rounds"] for m in rows) >= 1 and sum(m["dynamic/groups_filtered"] for m in rows) >= 1
    assert rows[-1]["dynamic/prompts_consumed_total"] == sum(m["dynamic/prompts_consumed"] for m in rows)
    answers = [
        int(s["answer"])
        for line in (tmp_path / "completions.jsonl").read_text().splitlines()
        for s in [json.loads(line)]
    ]
    assert answers and all(a % 2 == 1 for a in answers)  # only informative groups were trained on and logged


def test_refill_bound_gives_a_short_step_with_a_metric_and_a_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, rows = run(
            tmp_path,
            ["trainer.max_steps=3", "trainer.dynamic_sampling=refill", "trainer.dynamic_max_rounds=1"],
            answer_rule(lambda a: a % 5 == 0),
        )
    assert all(m["dynamic/refill_rounds"] <= 1 for m in rows)
    short = [m for m in rows if m["dynamic/short_groups"] > 0]
    assert short, rows
    for m in rows:
        trained = m["dynamic/groups_trained"]
        assert trained + m["dynamic/short_groups"] == 4 or m["dynamic/update_skipped"] == 1.0
    if any(m["dynamic/update_skipped"] == 0.0 for m in short):
        assert any("raise trainer.dynamic_max_rounds" in str(w.message) for w in caught)


def test_nothing_informative_skips_the_update_after_the_bound(tmp_path):
    trainer, rows = run(
        tmp_path,
        ["trainer.max_steps=2", "trainer.dynamic_sampling=refill", "trainer.dynamic_max_rounds=2"],
        answer_rule(lambda a: False),
    )
    before = rlvr.Trainer(rlvr.compose(RUN), rewards=[answer_rule(lambda a: False)], run_dir=tmp_path / "x")
    for m in rows:
        assert m["dynamic/refill_rounds"] == 2 and m["dynamic/prompts_consumed"] == 12  # 4 + 4 + 4
        assert m["dynamic/update_skipped"] == 1.0 and m["dynamic/groups_trained"] == 0 and m["grad_norm"] == 0.0
    assert trainer.skipped_steps == 0  # not counted as bad steps
    for a, b in zip(trainer.policy.model.parameters(), before.policy.model.parameters()):
        assert torch.equal(a, b)  # no optimizer step ever ran


def test_skip_mode_trains_on_the_informative_groups_without_generating_more(tmp_path):
    _, rows = run(
        tmp_path,
        ["trainer.max_steps=3", "trainer.dynamic_sampling=skip", "trainer.log_completions=8"],
        answer_rule(lambda a: a % 2 == 1),
    )
    for m in rows:
        assert m["dynamic/refill_rounds"] == 0 and m["dynamic/prompts_consumed"] == 4
        assert m["dynamic/groups_trained"] + m["dynamic/groups_filtered"] == 4 or m["dynamic/update_skipped"] == 1.0
    assert any(0 < m["dynamic/groups_filtered"] < 4 for m in rows)
    logged = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    for step in {s["step"] for s in logged}:
        m = rows[step - 1]
        if not m["dynamic/update_skipped"]:
            assert len([s for s in logged if s["step"] == step]) == 2 * m["dynamic/groups_trained"]


def test_bad_settings_fail_early():
    with pytest.raises(ValueError, match="trainer.dynamic_sampling='always'"):
        rlvr.Trainer(rlvr.compose([*RUN, "trainer.dynamic_sampling=always"]))
    with pytest.raises(ValueError, match="dynamic_max_rounds"):
        rlvr.Trainer(rlvr.compose([*RUN, "trainer.dynamic_max_rounds=-1"]))


def test_default_task_holds_out_at_least_100_questions_none_seen_in_training():
    task = rlvr.Trainer.__init__.__globals__["registry"].create("task", "arithmetic")
    train = {r["question"] for r in task.train_rows}
    held = [r["question"] for r in task.eval_rows]
    assert len(held) == 120 and len(set(held)) == 120 and not train & set(held)
    assert all(eval(q) == int(r["answer"]) for q, r in zip(held, task.eval_rows))
