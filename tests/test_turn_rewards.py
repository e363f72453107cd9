"""Per-turn rewards of multi-turn episodes: rewards to go, per-turn advantages, per-token credit, scoring."""

from __future__ import annotations

import math

import pytest
import torch

import rlvr
from rlvr.core.advantages import (
    group_advantages,
    outcome_turn_scores,
    rewards_to_go,
    token_advantages,
    token_turns,
    turn_advantages,
)
from rlvr.core.rewards import RewardError, RewardFn, score_all
from tests.conftest import end_turns_often


def test_rewards_to_go_by_hand():
    s = torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.0, 0.0]])
    assert rewards_to_go(s).tolist() == [[1.5, 1.0, 0.0], [2.0, 0.0, 0.0]]


def test_turn_advantages_by_hand():
    # episode 0: two turns scored 0.5 and 1.0 (to go: 1.5, 1.0); episode 1: one turn scored 0
    s = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    std = math.sqrt(((1.5 - 0.75) ** 2 + (0.0 - 0.75) ** 2) / 1)  # unbiased, G = 2
    a = turn_advantages(s, 2, scaling="group", baseline="mean", eps=1e-4)
    assert a[0, 0].item() == pytest.approx(0.75 / (std + 1e-4))
    assert a[0, 1].item() == pytest.approx(0.25 / (std + 1e-4))  # turn 2 is not credited with turn 1's 0.5
    assert a[1, 0].item() == pytest.approx(-0.75 / (std + 1e-4))
    d = turn_advantages(s, 2, scaling="none")
    assert d[0].tolist() == pytest.approx([0.75, 0.25]) and d[1, 0].item() == pytest.approx(-0.75)
    r = turn_advantages(s, 2, scaling="none", baseline="rloo")  # baseline: the other episode's return (0)
    assert r[0].tolist() == pytest.approx([1.5, 1.0]) and r[1, 0].item() == pytest.approx(-1.5)


@pytest.mark.parametrize(
    "scaling,baseline", [("group", "mean"), ("none", "mean"), ("none", "rloo"), ("batch", "mean"), ("group", "rloo")]
)
def test_outcome_scores_give_the_outcome_advantage_at_every_turn(scaling, baseline):
    g = torch.Generator().manual_seed(0)
    total = torch.rand(12, generator=g)
    turns = [1, 3, 2, 2, 1, 4, 3, 1, 2, 2, 3, 1]
    per_turn = turn_advantages(outcome_turn_scores(total, turns), 4, scaling, baseline)
    outcome = group_advantages(total, 4, scaling, baseline)
    for i, t in enumerate(turns):
        assert per_turn[i, :t].tolist() == pytest.approx([outcome[i].item()] * t, abs=1e-6)


def test_a_group_whose_returns_agree_gets_zero_everywhere():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # same return 1.0, different timing
    assert turn_advantages(s, 2).abs().max().item() == 0.0
    assert turn_advantages(s, 2, scaling="none").abs().max().item() == 0.0


def test_tokens_take_their_turns_advantage():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 0, 0, 0, 0, 0]])
    turns = token_turns(mask)
    assert turns.tolist() == [[0, 0, -1, -1, 1, -1, 2, 2], [0, -1, -1, -1, -1, -1, -1, -1]]
    per_turn = torch.tensor([[0.1, 0.2, 0.3], [-1.0, 0.0, 0.0]])
    adv = token_advantages(per_turn, turns)
    want = torch.tensor([[0.1, 0.1, 0, 0, 0.2, 0, 0.3, 0.3], [-1.0, 0, 0, 0, 0, 0, 0, 0]])
    assert torch.allclose(adv, want)


def reward(name, fn, weight=1.0):
    return RewardFn(name=name, fn=fn, weight=weight)


def test_score_all_sums_lists_and_puts_numbers_on_the_last_turn():
    per_turn = reward("p", lambda completions, **kw: [[0.5, 0.25], [1.0]], weight=2.0)
    outcome = reward("o", lambda completions, **kw: [1.0, None])
    out = score_all([per_turn, outcome], ["a", "b"], ["", ""], {}, turns=[2, 1])
    assert out.table.tolist()[0] == [0.75, 1.0] and out.table[1, 0].item() == 1.0 and math.isnan(out.table[1, 1])
    assert out.turn_scores.tolist() == [[1.0, 0.5 + 1.0], [2.0, 0.0]]
    assert score_all([outcome], ["a", "b"], ["", ""], {}, turns=[2, 1]).turn_scores is None  # outcome only


@pytest.mark.parametrize(
    "values,turns,match",
    [
        ([[1.0], [1.0]], None, "only for multi-turn"),
        ([[1.0, 2.0, 3.0], [1.0]], [2, 1], "3 per-turn scores for episode 0, which has 2"),
        ([[1.0, float("nan")], [1.0]], [2, 1], "non-finite"),
        ([[1.0, "1"], [1.0]], [2, 1], "string"),
    ],
)
def test_malformed_per_turn_scores_are_errors_naming_the_reward(values, turns, match):
    bad = reward("turny", lambda completions, **kw: values)
    with pytest.raises(RewardError, match=match) as err:
        score_all([bad], ["a", "b"], ["", ""], {}, turns=turns)
    assert "turny" in str(err.value)


def test_an_always_equal_object_is_not_a_score():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    bad = reward("eq", lambda completions, **kw: [[AlwaysEqual()], [1.0]])
    with pytest.raises(RewardError, match="expected a number"):
        score_all([bad], ["a", "b"], ["", ""], {}, turns=[1, 1])


def test_guess_valid_per_turn_matches_its_episode_score():
    per_turn = rlvr.create("reward", "guess_valid", per_turn=True)
    whole = rlvr.create("reward", "guess_valid")
    eps = [
        {"turns": 3, "infos": [{"valid": True}, {"valid": False}, {"valid": True}]},
        {"turns": 2, "infos": [{"valid": True}]},  # the second turn was cut by a limit: no info
    ]
    lists = per_turn(["", ""], episode=eps)
    assert lists[0] == pytest.approx([1 / 3, 0, 1 / 3]) and lists[1] == [0.5, 0.0]
    assert sum(lists[0]) == pytest.approx(whole(["", ""], episode=eps)[0])


def guess_overrides(reward: list[str]) -> list[str]:
    return [
        "model=tiny",
        "env=guess",
        "env.max_turns=3",
        "task=guess",
        *reward,
        "trainer.max_steps=1",
        "trainer.prompts_per_step=2",
        "trainer.num_generations=4",
        "trainer.lr=1e-3",
        "trainer.warmup_steps=0",
        "engine.max_new_tokens=6",
        "trainer.eval_steps=0",
        "trainer.progress=false",
        "trainer.audit=false",
        "logger=[]",
    ]


def train_once(reward: list[str], run_dir):
    """One step of the tiny model on env=guess; returns (weights before, weights after, advantages the loss got)."""
    t = rlvr.Trainer(rlvr.compose(guess_overrides(reward)), run_dir=run_dir)
    end_turns_often(t)
    seen: list[torch.Tensor] = []

    class Spy:  # the loss plugin, recording the advantages it is given
        def __getattr__(self, name):
            return getattr(loss, name)

        def __call__(self, logps, old, ref, advantages, *a, **kw):
            seen.append(advantages.detach().clone())
            return loss(logps, old, ref, advantages, *a, **kw)

    loss, t.loss = t.loss, Spy()
    before = [p.detach().clone() for p in t.policy.model.parameters()]
    t.train()
    return before, [p.detach().clone() for p in t.policy.model.parameters()], seen


def test_per_turn_rewards_train_with_per_token_advantages(tmp_path):
    before, after, seen = train_once(["reward=[guess_valid]", "reward.guess_valid.per_turn=true"], tmp_path)
    assert seen and seen[0].ndim == 2  # [N, T]: each turn's tokens carry their own advantage
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.isfinite(p).all() for p in after)


def test_per_turn_scores_on_the_last_turn_train_exactly_as_outcome_scores(tmp_path):
    """A reward that returns [0, ..., 0, score] per episode gives the same update as one that returns score."""
    from rlvr.plugins.envs.guess import GuessValidConfig, guess_valid_reward

    def last_turn(cfg):
        fn = guess_valid_reward(GuessValidConfig())

        def guess_valid_last(completions, episode=None, **kw):
            scores = fn(completions, episode=episode, **kw)
            return [[0.0] * (e["turns"] - 1) + [s] if e["turns"] else s for s, e in zip(scores, episode)]

        return guess_valid_last

    rlvr.add_plugin("reward", rlvr.PluginSpec("guess_valid_last", last_turn, GuessValidConfig))
    before, outcome, adv_outcome = train_once(["reward=[guess_valid]"], tmp_path / "outcome")
    _, per_turn, adv_turns = train_once(["reward=[guess_valid_last]"], tmp_path / "per_turn")
    assert adv_outcome[0].ndim == 1 and adv_turns[0].ndim == 2
    assert adv_outcome[0].abs().sum() > 0  # there was something to learn
    assert all(torch.equal(a, b) for a, b in zip(outcome, per_turn))
    assert any(not torch.equal(a, b) for a, b in zip(before, outcome))


def test_the_audit_checks_read_an_episodes_final_answer_not_its_trajectory(tmp_path):
    """A tool's output in the trajectory is not the model's answer: the reward-hacking monitor gets the final
    assistant message of each episode ("" when a limit cut it)."""
    from rlvr.core.episodes import final_answer

    t = rlvr.Trainer(rlvr.compose(guess_overrides(["reward=[guess_valid]"])), run_dir=tmp_path)
    end_turns_often(t)
    seen = []
    monitor = t.monitor

    def spy(step, completions, *a, **kw):
        seen.append((list(completions), list(t._batch_episodes)))
        return monitor(step, completions, *a, **kw)

    orig_score = t.score

    def score(batch):
        orig_score(batch)
        t._batch_episodes = batch.rollouts.episodes

    t.score, t.monitor = score, spy
    t.train()
    said, eps = seen[0]
    assert said == [final_answer(e) or "" for e in eps]
    assert any(e["turns"] > 1 for e in eps)  # trajectories longer than the answer
