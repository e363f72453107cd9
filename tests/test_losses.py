"""Loss plugins: grpo, bnpo, dr_grpo, dapo, gspo, ppo_clip.

Hand-computed values on tiny tensors, every option on and off, float64 gradchecks, the gradient-accumulation
identity, the on-policy gradient, config validation and the Hydra YAMLs. A plain-Python scalar re-implementation
(``scalar_loss``) cross-checks random cases for every combination of options.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Optional

import pytest
import torch

import rlvr

ALL = ["grpo", "bnpo", "dr_grpo", "dapo", "gspo", "ppo_clip"]
L = 4  # max_completion_length used throughout


def make(name: str, **params: Any):
    params.setdefault("max_completion_length", L)
    return rlvr.create("loss", name, **params)


# --------------------------------------------------------------------------------------------------
# The tiny batch: N=2 completions, T=3 positions; the second completion has 2 tokens.
#   log-ratios logps - old:  row 0 (A=+1):   0.25 -> r=1.284 (> 1.2: high-clipped),  -0.3 -> r=0.741,  0.0 -> r=1
#                            row 1 (A=-0.5): -0.3 -> r=0.741 (< 0.8: low-clipped),     0.7 -> r=2.014, (masked)
# --------------------------------------------------------------------------------------------------
LOGPS = [[-1.0, -2.0, -0.5], [-0.3, -1.2, -0.8]]
LOG_RATIO = [[0.25, -0.3, 0.0], [-0.3, 0.7, 0.4]]
REF_MINUS_LOGPS = [[0.2, -0.1, 0.0], [0.3, 0.1, 0.5]]
ADV = [1.0, -0.5]
MASK = [[1, 1, 1], [1, 1, 0]]
E = math.exp


def batch(dtype: torch.dtype = torch.float64, requires_grad: bool = True) -> dict[str, torch.Tensor]:
    lp = torch.tensor(LOGPS, dtype=dtype, requires_grad=requires_grad)
    old = torch.tensor(LOGPS, dtype=dtype) - torch.tensor(LOG_RATIO, dtype=dtype)
    ref = torch.tensor(LOGPS, dtype=dtype) + torch.tensor(REF_MINUS_LOGPS, dtype=dtype)
    return {
        "logps": lp,
        "old_logps": old,
        "ref_logps": ref,
        "advantages": torch.tensor(ADV, dtype=dtype),
        "mask": torch.tensor(MASK),
        "truncated": torch.tensor([False, True]),
    }


def k3(x: float) -> float:  # x = ref - logps
    return E(x) - x - 1.0


# Per-token losses of the tiny batch, worked out by hand (eps=0.2 both sides, no delta, beta=0).
#   A>0: ℓ = -A * min(r, clip(r));  A<0: ℓ = |A| * max(r, clip(r)).
HAND = [
    [
        -1.0 * 1.2,  # r=e^0.25=1.284 > 1.2 -> clipped to 1.2
        -1.0 * E(-0.3),  # r=0.741, min(0.741, 0.8) = r
        -1.0 * 1.0,
    ],  # r=1
    [
        0.5 * 0.8,  # r=0.741 < 0.8, max(r, 0.8) = 0.8
        0.5 * E(0.7),
    ],
]  # r=2.014, max(r, 1.2) = r (unbounded without delta)
ROW0 = sum(HAND[0])
ROW1 = sum(HAND[1])


def value(name: str, **params: Any) -> tuple[float, dict[str, float]]:
    loss = make(name, **params)
    b = batch()
    v, metrics = loss(**b)
    return float(v.detach()), metrics


class TestHandComputed:
    def test_grpo(self) -> None:
        v, m = value("grpo")
        assert v == pytest.approx((ROW0 / 3 + ROW1 / 2) / 2, abs=1e-12)
        assert m["clip_ratio/low_mean"] == pytest.approx(1 / 5)
        assert m["clip_ratio/high_mean"] == pytest.approx(1 / 5)
        assert m["clip_ratio/region_mean"] == pytest.approx(2 / 5)
        assert "kl" not in m

    def test_bnpo(self) -> None:
        assert value("bnpo")[0] == pytest.approx((ROW0 + ROW1) / 5, abs=1e-12)

    def test_dr_grpo(self) -> None:
        assert value("dr_grpo")[0] == pytest.approx((ROW0 + ROW1) / (2 * L), abs=1e-12)
        assert value("dr_grpo", max_completion_length=10)[0] == pytest.approx((ROW0 + ROW1) / 20, abs=1e-12)

    def test_dapo_defaults_to_clip_higher(self) -> None:
        # DAPO's epsilon_high=0.28: the high-clipped token is clipped at 1.28 instead of 1.2
        expected = (ROW0 + 1.2 - 1.28 + ROW1) / 5
        v, m = value("dapo")
        assert v == pytest.approx(expected, abs=1e-12)
        assert m["clip_ratio/high_mean"] == pytest.approx(1 / 5)  # 1.284 > 1.28 still
        assert value("dapo", epsilon_high=None)[0] == pytest.approx((ROW0 + ROW1) / 5, abs=1e-12)

    def test_ppo_clip(self) -> None:
        assert value("ppo_clip")[0] == pytest.approx((ROW0 + ROW1) / 5, abs=1e-12)

    def test_ppo_clip_entropy_bonus(self) -> None:
        loss = make("ppo_clip", entropy_coef=0.1)
        assert loss.needs_entropy
        ent = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 9.0]], dtype=torch.float64)
        v, m = loss(**batch(), entropies=ent)
        assert v.item() == pytest.approx((ROW0 + ROW1 - 0.1 * (1 + 2 + 3 + 0.5 + 0.25)) / 5, abs=1e-12)
        assert m["entropy"] == pytest.approx((1 + 2 + 3 + 0.5 + 0.25) / 5)
        # entropy_coef=0: entropies are logged but do not change the loss
        loss0 = make("ppo_clip")
        assert not loss0.needs_entropy
        v0, m0 = loss0(**batch(), entropies=ent)
        assert v0.item() == pytest.approx((ROW0 + ROW1) / 5, abs=1e-12)
        assert "entropy" in m0

    def test_gspo(self) -> None:
        # one ratio per sequence: exp(mean of the active log-ratios); clip range [1-3e-4, 1+4e-4]
        s0 = E((0.25 - 0.3 + 0.0) / 3)  # 0.9835, A>0: min(s, clip(s)) = s
        s1 = E((-0.3 + 0.7) / 2)  # 1.2214, A<0: max(s, clip(s)) = s
        v, m = value("gspo")
        assert v == pytest.approx((-1.0 * s0 + 0.5 * s1) / 2, abs=1e-12)
        # row 1 (A<0, s > 1+4e-4) is not "clipped" by the metric's definition; row 0 (A>0, s < 1) neither
        assert m["clip_ratio/region_mean"] == 0.0


class TestOptions:
    def test_epsilon_high(self) -> None:
        v, m = value("grpo", epsilon_high=0.28)
        assert v == pytest.approx(((ROW0 + 1.2 - 1.28) / 3 + ROW1 / 2) / 2, abs=1e-12)
        v, m = value("grpo", epsilon_high=0.3)  # 1.284 < 1.3: no longer clipped
        assert v == pytest.approx(((ROW0 + 1.2 - E(0.25)) / 3 + ROW1 / 2) / 2, abs=1e-12)
        assert m["clip_ratio/high_mean"] == 0.0 and m["clip_ratio/low_mean"] == pytest.approx(1 / 5)

    def test_epsilon_low(self) -> None:
        v, m = value("grpo", epsilon=0.3, epsilon_high=0.2)  # lower clip 0.7: r=0.741 no longer low-clipped
        assert v == pytest.approx((ROW0 / 3 + (0.5 * E(-0.3) + 0.5 * E(0.7)) / 2) / 2, abs=1e-12)
        assert m["clip_ratio/low_mean"] == 0.0

    def test_delta_two_sided(self) -> None:
        # r=2.014 with A<0 is capped at delta=1.5: ℓ = 0.5 * max(min(r, 1.5), 1.2) = 0.75
        v, _ = value("grpo", delta=1.5)
        assert v == pytest.approx((ROW0 / 3 + (0.4 + 0.75) / 2) / 2, abs=1e-12)
        # delta above every ratio changes nothing; A>0 tokens are never affected
        assert value("grpo", delta=3.0)[0] == pytest.approx(value("grpo")[0], abs=1e-12)

    def test_beta_kl(self) -> None:
        beta = 0.1
        kl = [[k3(x) for x in row] for row in REF_MINUS_LOGPS]
        v, m = value("grpo", beta=beta)
        row0 = ROW0 + beta * sum(kl[0])
        row1 = ROW1 + beta * (kl[1][0] + kl[1][1])
        assert v == pytest.approx((row0 / 3 + row1 / 2) / 2, abs=1e-12)
        assert m["kl"] == pytest.approx((sum(kl[0]) + kl[1][0] + kl[1][1]) / 5)
        v, m = value("dapo", beta=beta, epsilon_high=None)
        assert v == pytest.approx((row0 + row1) / 5, abs=1e-12)

    def test_beta_zero_ignores_ref(self) -> None:
        loss = make("grpo")
        b = batch()
        b["ref_logps"] = None
        v, m = loss(**b)
        assert v.item() == pytest.approx(value("grpo")[0]) and "kl" not in m

    @pytest.mark.parametrize(
        "name,expected",
        [
            ("grpo", (ROW0 / 3 + 0.0) / 2),  # the masked row still counts as a sequence (TRL semantics)
            ("bnpo", ROW0 / 3),
            ("dr_grpo", ROW0 / (2 * L)),
            ("dapo", ROW0 / 3),  # run with epsilon_high=0.2 so that ROW0 applies
            ("ppo_clip", ROW0 / 3),
        ],
    )
    def test_mask_truncated_completions(self, name: str, expected: float) -> None:
        params = {"epsilon_high": 0.2} if name == "dapo" else {}
        on, _ = value(name, mask_truncated_completions=True, **params)
        off, _ = value(name, mask_truncated_completions=False, **params)
        assert on == pytest.approx(expected, abs=1e-12)
        assert off != pytest.approx(on)
        loss = make(name, mask_truncated_completions=True)
        assert loss.active_tokens(torch.tensor(MASK), torch.tensor([False, True])) == 3
        assert make(name).active_tokens(torch.tensor(MASK), torch.tensor([False, True])) == 5
        assert loss.active_tokens(torch.tensor(MASK), None) == 5

    def test_sequence_level_on_grpo(self) -> None:
        s0, s1 = E(-0.05 / 3), E(0.2)  # s1 = 1.2214 > 1.2 with A<0: max(s, 1.2) = s
        v, m = value("grpo", importance_sampling_level="sequence")
        assert v == pytest.approx((-s0 + 0.5 * s1) / 2, abs=1e-12)
        assert m["clip_ratio/region_mean"] == 0.0
        # sequence level with a tight range: s0 < 1-3e-4 and A>0 -> unclipped; s1 high with A<0 -> unclipped
        assert value("gspo")[0] == pytest.approx(v, abs=1e-12)
        # gspo at token level is grpo with gspo's tiny epsilons
        assert value("gspo", importance_sampling_level="token")[0] == pytest.approx(
            value("grpo", epsilon=3e-4, epsilon_high=4e-4)[0], abs=1e-12
        )

    def test_sequence_level_on_dapo(self) -> None:
        s0, s1 = E(-0.05 / 3), E(0.2)
        v, _ = value("dapo", importance_sampling_level="sequence", epsilon_high=0.2)
        assert v == pytest.approx((3 * -s0 + 2 * 0.5 * s1) / 5, abs=1e-12)

    def test_sequence_level_ignores_masked_tokens(self) -> None:
        loss = make("gspo")
        b = batch()
        v1, _ = loss(**b)
        b["old_logps"] = b["old_logps"].clone()
        b["old_logps"][1, 2] += 100.0  # a padding position: must not move the sequence ratio
        v2, _ = loss(**b)
        assert v1.item() == v2.item()

    def test_per_token_advantages(self) -> None:
        b = batch()
        b["advantages"] = torch.tensor(ADV, dtype=torch.float64).unsqueeze(-1).expand(2, 3).contiguous()
        v, _ = make("ppo_clip")(**b)
        assert v.item() == pytest.approx(value("ppo_clip")[0], abs=1e-12)

    def test_metrics_are_floats(self) -> None:
        for name in ALL:
            _, m = value(name, beta=0.04)
            assert set(m) >= {"clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "kl"}
            assert all(type(x) is float for x in m.values()), (name, m)


# --------------------------------------------------------------------------------------------------
# Scalar re-implementation (pure Python) used to cross-check random cases with every option.
# --------------------------------------------------------------------------------------------------
AGG = {"grpo": "grpo", "gspo": "grpo", "bnpo": "bnpo", "dr_grpo": "dr_grpo", "dapo": "dapo", "ppo_clip": "dapo"}


def scalar_loss(
    name: str,
    lp: list[list[float]],
    old: list[list[float]],
    ref: Optional[list[list[float]]],
    adv: list[float],
    mask: list[list[int]],
    trunc: list[bool],
    *,
    eps: float,
    eps_high: float,
    delta: Optional[float],
    beta: float,
    mtc: bool,
    level: str,
    ent: Optional[list[list[float]]] = None,
    ent_coef: float = 0.0,
    num_sequences: Optional[int] = None,
    num_tokens: Optional[int] = None,
) -> float:
    n, t = len(lp), len(lp[0])
    m = [[float(mask[i][j]) * (0.0 if (mtc and trunc[i]) else 1.0) for j in range(t)] for i in range(n)]
    losses = [[0.0] * t for _ in range(n)]
    for i in range(n):
        cnt = sum(m[i])
        seq_lr = sum((lp[i][j] - old[i][j]) * m[i][j] for j in range(t)) / max(cnt, 1.0)
        for j in range(t):
            r = E(seq_lr) if level == "sequence" else E(lp[i][j] - old[i][j])
            rc = min(max(r, 1 - eps), 1 + eps_high)
            ru = min(r, delta) if delta is not None else r
            ell = -min(ru * adv[i], rc * adv[i])
            if beta > 0:
                ell += beta * k3(ref[i][j] - lp[i][j])
            if ent is not None and ent_coef:
                ell -= ent_coef * ent[i][j]
            losses[i][j] = ell
    ns = n if num_sequences is None else num_sequences
    total = sum(losses[i][j] * m[i][j] for i in range(n) for j in range(t))
    tokens = sum(map(sum, m))
    agg = AGG[name]
    if agg == "grpo":
        return sum(sum(losses[i][j] * m[i][j] for j in range(t)) / max(sum(m[i]), 1.0) for i in range(n)) / ns
    if agg == "bnpo":
        return total / max(tokens, 1.0) * n / ns
    if agg == "dr_grpo":
        return total / (ns * L)
    return total / max(tokens if num_tokens is None else num_tokens, 1.0)


def random_batch(n: int, t: int, seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(n, t, generator=g, dtype=dtype) * 3 - 0.05
    old = lp + (torch.rand(n, t, generator=g, dtype=dtype) - 0.5) * 1.2
    ref = lp + (torch.rand(n, t, generator=g, dtype=dtype) - 0.5) * 0.6
    adv = torch.randn(n, generator=g, dtype=dtype)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).long()
    trunc = lengths == t
    ent = torch.rand(n, t, generator=g, dtype=dtype) * 2
    return {
        "logps": lp.requires_grad_(),
        "old_logps": old,
        "ref_logps": ref,
        "advantages": adv,
        "mask": mask,
        "truncated": trunc,
        "entropies": ent,
    }


OPTION_GRID = list(itertools.product([None, 0.28], [None, 1.5], [0.0, 0.05], [False, True], ["token", "sequence"]))


@pytest.mark.parametrize("name", ALL)
def test_matches_scalar_reference_for_every_option(name: str) -> None:
    for k, (eps_high, delta, beta, mtc, level) in enumerate(OPTION_GRID):
        params: dict[str, Any] = dict(
            epsilon=0.2,
            epsilon_high=eps_high,
            delta=delta,
            beta=beta,
            mask_truncated_completions=mtc,
            importance_sampling_level=level,
        )
        if name == "ppo_clip":
            params["entropy_coef"] = 0.01 * (k % 2)
        loss = make(name, **params)
        b = random_batch(5, 6, seed=k)
        v, _ = loss(**b)
        expected = scalar_loss(
            name,
            b["logps"].tolist(),
            b["old_logps"].tolist(),
            b["ref_logps"].tolist(),
            b["advantages"].tolist(),
            b["mask"].tolist(),
            b["truncated"].tolist(),
            eps=0.2,
            eps_high=0.2 if eps_high is None else eps_high,
            delta=delta,
            beta=beta,
            mtc=mtc,
            level=level,
            ent=b["entropies"].tolist(),
            ent_coef=params.get("entropy_coef", 0.0),
        )
        assert v.item() == pytest.approx(expected, rel=1e-10, abs=1e-12), (name, params)


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"epsilon_high": 0.28, "delta": 1.5, "beta": 0.1},
        {"importance_sampling_level": "sequence", "beta": 0.1, "mask_truncated_completions": True},
    ],
)
def test_gradcheck_float64(name: str, options: dict[str, Any]) -> None:
    params = dict(options)
    if name == "ppo_clip":
        params["entropy_coef"] = 0.02
    loss = make(name, **params)
    b = random_batch(3, 4, seed=123)
    b["logps"] = b["logps"].detach().requires_grad_()
    ent = b.pop("entropies").requires_grad_()

    def f(lp: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return loss(
            lp,
            b["old_logps"],
            b["ref_logps"],
            b["advantages"],
            b["mask"],
            b["truncated"],
            entropies=e if name == "ppo_clip" else None,
        )[0]

    assert torch.autograd.gradcheck(f, (b["logps"], ent), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_on_policy_ratio_one_and_policy_gradient(name: str) -> None:
    """old_logps=None: ratio 1, nothing clipped, gradient -A_i * M_it / normaliser."""
    loss = make(name)
    b = random_batch(4, 5, seed=7)
    lp, adv, mask = b["logps"], b["advantages"], b["mask"].double()
    v, m = loss(lp, None, None, adv, b["mask"], b["truncated"])
    assert m["clip_ratio/region_mean"] == 0.0
    v.backward()
    n, tokens, lengths = mask.shape[0], mask.sum(), mask.sum(-1, keepdim=True)
    normaliser = {
        "grpo": lengths * n,
        "gspo": lengths * n,
        "bnpo": tokens,
        "dr_grpo": torch.tensor(n * L),
        "dapo": tokens,
        "ppo_clip": tokens,
    }[name]
    expected_grad = -adv.unsqueeze(-1) * mask / normaliser
    torch.testing.assert_close(lp.grad, expected_grad, rtol=1e-12, atol=1e-12)
    # the value itself is -sum(A M) / normaliser (ratio 1 everywhere)
    assert v.item() == pytest.approx(float((-adv.unsqueeze(-1) * mask / normaliser).sum()), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Gradient accumulation: per-micro-batch values add up to the whole batch's value
# --------------------------------------------------------------------------------------------------
SPLITS = [(0, 2), (2, 3), (3, 6)]  # unequal micro-batches of a 6-completion step


def _slice(b: dict[str, torch.Tensor], lo: int, hi: int, lp: torch.Tensor) -> dict[str, Any]:
    return {
        "logps": lp[lo:hi],
        "old_logps": b["old_logps"][lo:hi],
        "ref_logps": b["ref_logps"][lo:hi],
        "advantages": b["advantages"][lo:hi],
        "mask": b["mask"][lo:hi],
        "truncated": b["truncated"][lo:hi],
        "entropies": b["entropies"][lo:hi],
    }


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "gspo", "ppo_clip"])
@pytest.mark.parametrize("mtc", [False, True])
def test_accumulation_identity_exact(name: str, mtc: bool) -> None:
    params: dict[str, Any] = {"beta": 0.05, "mask_truncated_completions": mtc, "epsilon_high": 0.28}
    if name == "ppo_clip":
        params["entropy_coef"] = 0.01
    loss = make(name, **params)
    b = random_batch(6, 5, seed=11)
    full_lp = b["logps"].detach().clone().requires_grad_()
    full, _ = loss(**{**_slice(b, 0, 6, full_lp)})
    full.backward()

    acc_lp = b["logps"].detach().clone().requires_grad_()
    num_tokens = sum(loss.active_tokens(b["mask"][lo:hi], b["truncated"][lo:hi]) for lo, hi in SPLITS)
    total = torch.zeros((), dtype=torch.float64)
    for lo, hi in SPLITS:
        part, _ = loss(**_slice(b, lo, hi, acc_lp), num_sequences=6, num_tokens=num_tokens)
        part.backward()
        total = total + part.detach()
    assert total.item() == pytest.approx(full.item(), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(acc_lp.grad, full_lp.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mtc", [False, True])
def test_accumulation_bnpo_sequence_weighted_micro_batch_means(mtc: bool) -> None:
    """bnpo normalises by each micro-batch's tokens; the step value is the sequence-weighted mean of those."""
    loss = make("bnpo", beta=0.05, mask_truncated_completions=mtc)
    b = random_batch(6, 5, seed=12)
    lp = b["logps"]
    parts = [float(loss(**_slice(b, lo, hi, lp), num_sequences=6)[0].item()) for lo, hi in SPLITS]
    alone = [float(loss(**_slice(b, lo, hi, lp))[0].item()) for lo, hi in SPLITS]  # plain bnpo of each micro-batch
    assert sum(parts) == pytest.approx(sum((hi - lo) / 6 * a for (lo, hi), a in zip(SPLITS, alone)), rel=1e-12)


def test_accumulation_bnpo_equals_whole_batch_with_equal_token_counts() -> None:
    """With equal micro-batches holding equal active tokens (TRL's setting), the sum is the whole-batch bnpo."""
    loss = make("bnpo", beta=0.05)
    b = random_batch(6, 5, seed=13)
    b["mask"] = torch.tensor(
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    )
    lp = b["logps"]
    full = loss(**_slice(b, 0, 6, lp))[0].item()
    parts = [float(loss(**_slice(b, lo, hi, lp), num_sequences=6)[0].item()) for lo, hi in [(0, 2), (2, 4), (4, 6)]]
    assert sum(parts) == pytest.approx(full, rel=1e-12)


def test_defaults_without_totals_are_the_plain_formulas() -> None:
    b = random_batch(4, 5, seed=14)
    for name in ALL:
        loss = make(name)
        v1, _ = loss(**b)
        n = 4
        tokens = loss.active_tokens(b["mask"], b["truncated"])
        v2, _ = loss(**b, num_sequences=n, num_tokens=tokens)
        assert v1.item() == pytest.approx(v2.item(), rel=1e-12), name


# --------------------------------------------------------------------------------------------------
# Construction and call errors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "params,match",
    [
        ({"epsilon": 0.0}, "epsilon must be in"),
        ({"epsilon": -0.1}, "epsilon must be in"),
        ({"epsilon": 1.5}, "epsilon must be in"),
        ({"epsilon_high": 0.0}, "epsilon_high must be > 0"),
        ({"delta": 1.2}, r"delta must exceed 1 \+ epsilon_high"),
        ({"delta": 1.25, "epsilon_high": 0.28}, r"delta must exceed 1 \+ epsilon_high = 1.28"),
        ({"beta": -0.01}, "beta .* must be >= 0"),
        ({"importance_sampling_level": "tokens"}, "importance_sampling_level must be"),
        ({"max_completion_length": 0}, "max_completion_length must be a positive integer"),
        ({"epsilon": float("nan")}, "finite"),
    ],
)
def test_bad_parameters_fail_at_construction(name: str, params: dict[str, Any], match: str) -> None:
    if name == "gspo" and "delta" in params and "epsilon_high" not in params:
        params = {**params, "epsilon_high": 0.2}
    with pytest.raises(ValueError, match=match):
        make(name, **params)


def test_dr_grpo_needs_max_completion_length() -> None:
    with pytest.raises(ValueError, match="max_completion_length"):
        rlvr.create("loss", "dr_grpo")
    for name in ["grpo", "bnpo", "dapo", "gspo", "ppo_clip"]:
        rlvr.create("loss", name)  # the others do not need it


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(TypeError, match="epsilon_hi"):
        rlvr.create("loss", "grpo", epsilon_hi=0.3)
    with pytest.raises(TypeError, match="entropy_coef"):
        rlvr.create("loss", "grpo", entropy_coef=0.1)  # only ppo_clip has it


@pytest.mark.parametrize("name", ALL)
def test_beta_without_reference_fails_clearly(name: str) -> None:
    loss = make(name, beta=0.04)
    b = batch()
    b["ref_logps"] = None
    with pytest.raises(ValueError, match=r"beta=0.04 > 0 but no reference log-probs"):
        loss(**b)


def test_entropy_coef_without_entropies_fails_clearly() -> None:
    loss = make("ppo_clip", entropy_coef=0.01)
    with pytest.raises(ValueError, match="no per-token entropies"):
        loss(**batch())


def test_shape_errors() -> None:
    loss = make("grpo")
    b = batch()
    with pytest.raises(ValueError, match="old_logps has shape"):
        loss(**{**b, "old_logps": b["old_logps"][:, :2]})
    with pytest.raises(ValueError, match="advantages has shape"):
        loss(**{**b, "advantages": torch.zeros(3)})
    with pytest.raises(ValueError, match="truncated has shape"):
        loss(**{**b, "truncated": torch.zeros(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="advantages .* and mask .* are required"):
        loss(b["logps"])


def test_contract_attributes() -> None:
    for name in ALL:
        loss = make(name, beta=0.02)
        assert loss.beta == 0.02 and loss.needs_entropy is False
    assert make("ppo_clip", entropy_coef=-0.01).needs_entropy  # a penalty is allowed too
    assert make("grpo").beta == 0.0


def test_float32_and_empty_rows() -> None:
    loss = make("grpo")
    b = batch(dtype=torch.float32)
    b["mask"] = torch.zeros(2, 3)
    v, m = loss(**b)
    assert v.item() == 0.0 and m["clip_ratio/region_mean"] == 0.0
    v.backward()
    assert b["logps"].grad is not None and torch.all(b["logps"].grad == 0)
    assert v.dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# Hydra configs
# --------------------------------------------------------------------------------------------------
def test_every_loss_has_a_yaml_that_builds() -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from rlvr.core.config import plugin_params, store_plugin_configs

    store_plugin_configs()
    GlobalHydra.instance().clear()
    built = {}
    with initialize_config_module(config_module="rlvr.conf", version_base="1.3"):
        for name in ALL:
            cfg = compose(config_name=f"loss/{name}", overrides=["+engine={max_new_tokens: 16}"])
            assert cfg.loss.name == name
            built[name] = rlvr.create("loss", name, **plugin_params(cfg.loss))
    GlobalHydra.instance().clear()
    assert built["dr_grpo"].max_completion_length == 16
    assert (built["gspo"].epsilon_low, built["gspo"].epsilon_high) == (3e-4, 4e-4)
    assert built["gspo"].importance_sampling_level == "sequence"
    assert built["dapo"].epsilon_high == 0.28
    assert all(loss.beta == 0.0 for loss in built.values())


def test_python_defaults_match_the_yaml_defaults() -> None:
    gspo = rlvr.create("loss", "gspo")
    assert (gspo.epsilon_low, gspo.epsilon_high, gspo.importance_sampling_level) == (3e-4, 4e-4, "sequence")
    assert rlvr.create("loss", "dapo").epsilon_high == 0.28
    assert rlvr.create("loss", "grpo").epsilon_high == 0.2


def test_all_losses_registered_with_source() -> None:
    from rlvr.core.registry import get

    assert set(ALL) <= set(rlvr.names("loss"))
    assert get("loss", "grpo").source == "rlvr" and get("loss", "ppo_clip").module == "rlvr.plugins.losses.ppo"


def test_half_precision_logps_are_upcast() -> None:
    b = batch(dtype=torch.bfloat16)
    v, _ = make("dapo")(**b)
    assert v.dtype == torch.float32
    v.backward()
    assert b["logps"].grad is not None and b["logps"].grad.dtype == torch.bfloat16
    assert v.item() == pytest.approx(value("dapo")[0], abs=2e-2)
