"""The policy update alone (forward + backward of SmolLM2-135M's completion log-probs), its variants alternated
in one process: completions sharing rows on/off (``rlvr.modeling.packing``) x kept logits on/off
(``rlvr.kernels.logprobs``).

    python benchmarks/update_variants.py            # 2 threads, 3 timed repeats of each variant
    python benchmarks/update_variants.py 1 5        # 1 thread, 5 repeats

The batch is the vs-TRL setting's: 2 prompts of 40 tokens (one left-padded by 6) x 8 completions of at most 32
tokens, lengths 32 32 32 32 28 20 14 9 | 32 32 32 30 25 18 12 6 (mean 24.1). Printed: each variant's largest
log-prob difference from the first (padded rows, recomputed logits), then its median CPU and wall time.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM

    import rlvr.kernels.logprobs as lp
    import rlvr.modeling.packing as packing
    from rlvr.core.resources import reuse_freed_memory
    from rlvr.modeling.shared_prompt import grouped_completion_logprobs
    from rlvr.plugins.models.smollm2 import cached_checkpoint

    reuse_freed_memory()
    model = AutoModelForCausalLM.from_pretrained(str(cached_checkpoint()), dtype=torch.float32).train()
    B, G, P, T = 2, 8, 40, 32
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, 40000, (B, P), generator=gen)
    p_mask = torch.ones(B, P, dtype=torch.long)
    p_mask[1, :6] = 0
    lengths = torch.tensor([32, 32, 32, 32, 28, 20, 14, 9, 32, 32, 32, 30, 25, 18, 12, 6])
    comp = torch.randint(100, 40000, (B * G, T), generator=gen)
    c_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.cat([prompts.repeat_interleave(G, 0), comp], 1)
    mask = torch.cat([p_mask.repeat_interleave(G, 0), c_mask], 1)
    adv = torch.randn(B * G, T, generator=gen) * c_mask
    shared_rows = packing.mask_accepts_4d
    defaults = lp.token_logprobs.__kwdefaults__

    def run(rows: bool, keep: bool) -> tuple[float, float, torch.Tensor]:
        packing.mask_accepts_4d = shared_rows if rows else (lambda model: False)  # type: ignore[assignment]
        defaults["keep_logits_bytes"] = lp.KEEP_LOGITS_BYTES if keep else 0
        model.zero_grad(set_to_none=True)
        c0, t0 = time.process_time(), time.perf_counter()
        out = grouped_completion_logprobs(model, ids, mask, P, G, pack=True)
        (out * adv).sum().backward()
        return time.process_time() - c0, time.perf_counter() - t0, out.detach()

    variants = [(False, False), (True, False), (False, True), (True, True)]
    times: dict[tuple[bool, bool], list[tuple[float, float]]] = {v: [] for v in variants}
    first = None
    for r in range(reps + 1):  # round 0: warm-up and the equality check
        for v in variants:
            cpu, wall, out = run(*v)
            if first is None:
                first = out
            if r == 0:
                print(
                    f"shared rows={v[0]!s:5} kept logits={v[1]!s:5}: max |log-prob diff| "
                    f"{float(((out - first) * c_mask).abs().max()):.2e}"
                )
            else:
                times[v].append((cpu, wall))
    for v, ts in times.items():
        print(
            f"shared rows={v[0]!s:5} kept logits={v[1]!s:5}: CPU {statistics.median(t[0] for t in ts):.2f} s, "
            f"wall {statistics.median(t[1] for t in ts):.2f} s"
        )


if __name__ == "__main__":
    main()
