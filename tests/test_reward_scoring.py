"""The scoring machinery of rlvr.core.rewards: what a reward receives, how its output is checked,
how errors are reported, and how async rewards run."""

from __future__ import annotations

import asyncio
import functools
import math
import time

import pytest
import torch

from rlvr.core.rewards import RewardError, RewardFn, score, verifier_as_reward, weighted_total

COMPLETIONS = ["the answer is 4", "I think 5", "no idea"]
PROMPTS = ["2+2?", "2+3?", "1+1?"]
COLUMNS = {"answer": ["4", "5", "2"], "tests": [["t1"], ["t2"], ["t3"]], "metadata": [{"id": 1}, {"id": 2}, {"id": 3}]}


def test_reward_receives_completions_prompts_and_every_column_aligned():
    seen = {}

    def spy(completions, prompts, answer, tests, metadata, **kwargs):
        seen.update(
            completions=completions, prompts=prompts, answer=answer, tests=tests, metadata=metadata, extra=kwargs
        )
        return [1.0] * len(completions)

    score([RewardFn("spy", spy)], COMPLETIONS, PROMPTS, COLUMNS)
    assert seen["completions"] == COMPLETIONS and seen["prompts"] == PROMPTS
    assert seen["answer"] == COLUMNS["answer"] and seen["tests"] == COLUMNS["tests"]
    assert seen["metadata"] == COLUMNS["metadata"] and seen["extra"] == {}


def test_kwargs_only_reward_ignores_columns_it_does_not_need():
    table = score(
        [RewardFn("len", lambda completions, **_: [float(len(c)) for c in completions])], COMPLETIONS, PROMPTS, COLUMNS
    )
    assert table[:, 0].tolist() == [float(len(c)) for c in COMPLETIONS]


def test_table_shape_order_and_none_as_nan():
    rewards = [
        RewardFn("a", lambda completions, **_: [1.0, 2.0, 3.0]),
        RewardFn("b", lambda completions, **_: [None, 0.5, None]),
    ]
    table = score(rewards, COMPLETIONS, PROMPTS, COLUMNS)
    assert table.shape == (3, 2) and table.dtype == torch.float32
    assert table[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert math.isnan(table[0, 1]) and table[1, 1] == 0.5 and math.isnan(table[2, 1])


def test_weighted_total_leaves_none_out():
    table = torch.tensor([[1.0, float("nan")], [2.0, 4.0]])
    assert weighted_total(table, [1.0, 0.5]).tolist() == [1.0, 4.0]


def test_integers_and_bools_are_scores():
    table = score([RewardFn("i", lambda completions, **_: [1, True, 0])], COMPLETIONS, PROMPTS, COLUMNS)
    assert table[:, 0].tolist() == [1.0, 1.0, 0.0]


def test_verifier_as_reward_maps_pass_fail_and_keeps_none():
    verify = lambda completions, **_: [True, False, None]  # noqa: E731
    reward = verifier_as_reward(verify, pass_score=2.0, fail_score=-1.0)
    assert reward(COMPLETIONS) == [2.0, -1.0, None]
    table = score([RewardFn("v", reward)], COMPLETIONS, PROMPTS, COLUMNS)
    assert table[0, 0] == 2.0 and table[1, 0] == -1.0 and math.isnan(table[2, 0])


def test_verifier_as_reward_of_async_verifier_stays_async():
    async def verify(completions, **_):
        return [c.endswith("4") for c in completions]

    reward = verifier_as_reward(verify, pass_score=1.0, fail_score=0.0)
    assert asyncio.iscoroutinefunction(reward)
    table = score([RewardFn("v", reward)], COMPLETIONS, PROMPTS, COLUMNS)
    assert table[:, 0].tolist() == [1.0, 0.0, 0.0]


def test_async_rewards_run_concurrently():
    async def slow(completions, **_):
        await asyncio.sleep(0.3)
        return [1.0] * len(completions)

    rewards = [RewardFn(f"slow{i}", slow) for i in range(4)]
    start = time.perf_counter()
    table = score(rewards, COMPLETIONS, PROMPTS, COLUMNS)
    elapsed = time.perf_counter() - start
    assert table.shape == (3, 4) and bool((table == 1.0).all())
    assert elapsed < 0.9, f"4 async rewards of 0.3 s each took {elapsed:.2f} s: not concurrent"


def test_async_partial_is_awaited():
    async def scaled(completions, factor, **_):
        return [factor] * len(completions)

    table = score([RewardFn("p", functools.partial(scaled, factor=3.0))], COMPLETIONS, PROMPTS, COLUMNS)
    assert table[:, 0].tolist() == [3.0, 3.0, 3.0]


def test_score_works_inside_a_running_event_loop():
    async def a(completions, **_):
        return [0.5] * len(completions)

    async def notebook_cell():
        return score([RewardFn("a", a)], COMPLETIONS, PROMPTS, COLUMNS)

    table = asyncio.run(notebook_cell())
    assert table[:, 0].tolist() == [0.5, 0.5, 0.5]


def _fails_on_idea(completions, **_):
    out = []
    for c in completions:
        if "idea" in c:
            raise ValueError("cannot parse")
        out.append(1.0)
    return out


def test_raising_reward_names_plugin_row_and_completion():
    with pytest.raises(RewardError) as err:
        score([RewardFn("picky", _fails_on_idea)], COMPLETIONS, PROMPTS, COLUMNS)
    msg = str(err.value)
    assert "'picky'" in msg and "row 2" in msg and "no idea" in msg and "cannot parse" in msg
    assert "on_error" in msg  # tells the user how to keep training


def test_raising_async_reward_names_row_and_completion():
    async def picky(completions, **kwargs):
        return _fails_on_idea(completions, **kwargs)

    with pytest.raises(RewardError) as err:
        score([RewardFn("picky", picky)], COMPLETIONS, PROMPTS, COLUMNS)
    assert "row 2" in str(err.value) and "no idea" in str(err.value)


def test_raising_async_reward_names_plugin():
    async def broken(completions, **_):
        raise RuntimeError("endpoint down")

    with pytest.raises(RewardError, match="'broken'.*endpoint down"):
        score([RewardFn("broken", broken)], COMPLETIONS, PROMPTS, COLUMNS)


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("on_error,expected", [("zero", 0.0), ("none", None)])
def test_on_error_keeps_training(asynchronous, on_error, expected):
    fn = _fails_on_idea
    if asynchronous:

        async def fn(completions, **kwargs):  # noqa: F811
            return _fails_on_idea(completions, **kwargs)

    ok = RewardFn("ok", lambda completions, **_: [1.0] * len(completions))
    table = score([ok, RewardFn("picky", fn, on_error=on_error)], COMPLETIONS, PROMPTS, COLUMNS)
    assert table[:, 0].tolist() == [1.0, 1.0, 1.0]
    col = table[:, 1]
    if expected is None:
        assert bool(torch.isnan(col).all())
        assert weighted_total(table, [1.0, 1.0]).tolist() == [1.0, 1.0, 1.0]
    else:
        assert col.tolist() == [expected] * 3


@pytest.mark.parametrize("on_error", ["raise", "zero", "none"])
@pytest.mark.parametrize("values", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], []])
def test_wrong_length_is_an_error_never_broadcast(on_error, values):
    with pytest.raises(RewardError, match=r"returned \d+ scores for 3 completions"):
        score(
            [RewardFn("short", lambda completions, **_: list(values), on_error=on_error)],
            COMPLETIONS,
            PROMPTS,
            COLUMNS,
        )


def test_wrong_length_async_is_an_error():
    async def short(completions, **_):
        return [1.0]

    with pytest.raises(RewardError, match="returned 1 scores for 3 completions"):
        score([RewardFn("short", short, on_error="zero")], COMPLETIONS, PROMPTS, COLUMNS)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("on_error", ["raise", "zero"])
def test_non_finite_score_is_an_error(bad, on_error):
    with pytest.raises(RewardError, match="non-finite score .* completion 1"):
        score(
            [RewardFn("nan", lambda completions, **_: [0.0, bad, 0.0], on_error=on_error)],
            COMPLETIONS,
            PROMPTS,
            COLUMNS,
        )


@pytest.mark.parametrize("returned", [1.0, None, "1.0", {"a": 1}])
def test_scalar_or_mapping_return_is_an_error(returned):
    with pytest.raises(RewardError, match="must return a list"):
        score([RewardFn("scalar", lambda completions, **_: returned)], COMPLETIONS, PROMPTS, COLUMNS)


def test_non_number_in_list_is_an_error():
    with pytest.raises(RewardError, match=r"'obj' returned a list for completion 0: per-turn scores exist only"):
        score([RewardFn("obj", lambda completions, **_: [[1], 1.0, 1.0])], COMPLETIONS, PROMPTS, COLUMNS)
    with pytest.raises(RewardError, match=r"'obj' returned \{'a': 1\} for completion 0; expected a number"):
        score([RewardFn("obj", lambda completions, **_: [{"a": 1}, 1.0, 1.0])], COMPLETIONS, PROMPTS, COLUMNS)


def test_column_of_wrong_length_is_rejected():
    with pytest.raises(ValueError, match="column 'answer' has 2 values for 3 completions"):
        score([RewardFn("a", lambda completions, **_: [0.0] * 3)], COMPLETIONS, PROMPTS, {"answer": ["1", "2"]})


def test_reward_fn_validates_on_error_and_weight():
    with pytest.raises(ValueError, match="on_error"):
        RewardFn("x", lambda completions, **_: [], on_error="ignore")
    with pytest.raises(ValueError, match="finite"):
        RewardFn("x", lambda completions, **_: [], weight=float("nan"))


def test_no_rewards_gives_empty_table():
    assert score([], COMPLETIONS, PROMPTS, COLUMNS).shape == (3, 0)


def test_string_scores_are_rejected():
    with pytest.raises(RewardError, match="string"):
        score(
            [RewardFn("stringy", lambda completions, **kw: ["1.5"] * len(completions))], COMPLETIONS, PROMPTS, COLUMNS
        )


def test_columns_named_like_the_arguments_are_rejected():
    with pytest.raises(ValueError, match="clash"):
        score([RewardFn("ok", lambda completions, **kw: [0.0] * len(completions))], ["a"], ["p"], {"prompts": ["x"]})


def test_object_with_async_call_is_awaited():
    class Judge:
        async def __call__(self, completions, **kw):
            return [float(len(c)) for c in completions]

    table = score([RewardFn("judge", Judge())], ["ab", "abc"], ["p", "p"], {})
    assert table[:, 0].tolist() == [2.0, 3.0]
