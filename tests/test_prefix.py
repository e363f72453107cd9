"""Shared-prefix prefill (rlvr/core/prefix.py): same logits and same cache as a plain prefill."""

from __future__ import annotations

import pytest
import torch

import rlvr
from rlvr.core.episodes import _forward
from rlvr.core.prefix import prefill, shared_prefix_length


def test_shared_prefix_length_rules() -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 9], [5, 6, 7, 8, 2]])
    ones = torch.ones_like(ids)
    assert shared_prefix_length(ids, ones) == 3  # first differing column
    assert shared_prefix_length(ids[:1], ones[:1]) == 0  # one row: nothing to share
    same = ids[:1].repeat(3, 1)
    assert shared_prefix_length(same, ones) == 4  # identical rows: each keeps its last column
    padded = ones.clone()
    padded[1, 0] = 0  # a left-padded row: the padded column is not shared
    assert shared_prefix_length(ids, padded) == 0


@pytest.mark.parametrize("min_prefix", [1, 100])
def test_prefill_matches_plain_prefill_and_next_step(min_prefix: int) -> None:
    from transformers import DynamicCache

    policy = rlvr.create("model", "tiny")
    model = policy.model.eval()
    g = torch.Generator().manual_seed(0)
    head = torch.randint(3, 200, (1, 12), generator=g).repeat(3, 1)
    ids = torch.cat([head, torch.randint(3, 200, (3, 4), generator=g)], 1)  # 12 shared columns, 4 own
    mask = torch.ones_like(ids)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain_cache, shared_cache = DynamicCache(), DynamicCache()
        plain = _forward(model, ids, mask, pos, plain_cache)
        shared = prefill(model, ids, mask, pos, shared_cache, _forward, min_prefix=min_prefix)
        torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
        nxt = plain.argmax(-1)[:, None]  # one decoding step on each cache: the cached keys/values agree too
        mask2 = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)
        a = _forward(model, nxt, mask2, torch.full((3, 1), ids.shape[1]), plain_cache)
        b = _forward(model, nxt, mask2, torch.full((3, 1), ids.shape[1]), shared_cache)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert shared_cache.get_seq_length() == plain_cache.get_seq_length() == ids.shape[1] + 1
