import pytest
import torch

from rlvr.core.advantages import group_advantages, zero_std_fraction
from rlvr.core.rewards import RewardFn, score, weighted_total


def test_group_zscore_hand_computed():
    # group 1: [1, 3] mean 2, unbiased std sqrt(2); group 2: [0, 0, ...]
    r = torch.tensor([1.0, 3.0, 5.0, 5.0])
    a = group_advantages(r, 2)
    s = 2**0.5
    assert torch.allclose(a, torch.tensor([-1 / (s + 1e-4), 1 / (s + 1e-4), 0.0, 0.0]))


def test_group_of_four_unbiased_std():
    r = torch.tensor([0.0, 1.0, 2.0, 3.0])
    # mean 1.5, unbiased std = sqrt((2.25+0.25+0.25+2.25)/3) = sqrt(5/3)
    std = (5 / 3) ** 0.5
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-4)
    assert torch.allclose(group_advantages(r, 4), expected, atol=1e-6)


def test_zero_std_group_gets_zero_advantage_for_every_scaling():
    r = torch.tensor([2.0, 2.0, 2.0, -1.0, 1.0, 3.0])
    for scaling in ("group", "batch", "none"):
        a = group_advantages(r, 3, scaling=scaling)
        assert torch.equal(a[:3], torch.zeros(3))
    assert zero_std_fraction(r, 3) == 0.5


def test_no_scaling_is_dr_grpo_centering():
    r = torch.tensor([1.0, 3.0, 0.0, 4.0])
    assert torch.allclose(group_advantages(r, 2, scaling="none"), torch.tensor([-1.0, 1.0, -2.0, 2.0]))


def test_batch_scaling_uses_batch_std():
    r = torch.tensor([1.0, 3.0, 0.0, 4.0])
    std = r.std()
    assert torch.allclose(group_advantages(r, 2, scaling="batch"), torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (std + 1e-4))


def test_rloo_baseline():
    r = torch.tensor([1.0, 2.0, 6.0])  # leave-one-out means: 4, 3.5, 1.5
    a = group_advantages(r, 3, scaling="none", baseline="rloo")
    assert torch.allclose(a, torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="scaling"):
        group_advantages(torch.zeros(4), 2, scaling="zscore")
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.zeros(4), 1)


def test_none_rewards_are_left_out_of_the_weighted_sum():
    rewards = [
        RewardFn("a", lambda completions, **kw: [1.0, None]),
        RewardFn("b", lambda completions, **kw: [2.0, 3.0], weight=0.5),
    ]
    table = score(rewards, ["x", "y"], ["p", "p"], {})
    assert torch.isnan(table[1, 0])
    assert torch.allclose(weighted_total(table, [1.0, 0.5]), torch.tensor([2.0, 1.5]))
