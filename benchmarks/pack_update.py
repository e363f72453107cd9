"""The update's forward + backward on completions of different lengths: packed (length buckets) vs padded.

    python benchmarks/pack_update.py                    # SmolLM2-135M, 1 prompt of ~100 tokens x 4 completions
    python benchmarks/pack_update.py --lengths 256,200,128,64 --repeats 3

A controlled version of ``benchmarks/padding.py``'s update half: one group (the prompt runs once in both
variants), completions of the given lengths (random tokens, right-padded to the longest), the trainer's
log-prob path (``grouped_completion_logprobs``) with ``pack=False`` and ``pack=True``, forward + backward of
the summed log-probs, alternating so the machine's load hits both alike. Prints medians and the ratio of
token-passes (padded ``N·T`` against the buckets' ``Σ rows·width``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="128,96,48,16")
    ap.add_argument("--prompt", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import rlvr
    from rlvr.modeling.packing import completion_widths, length_buckets
    from rlvr.modeling.shared_prompt import grouped_completion_logprobs

    policy = rlvr.create("model", "smollm2")
    model = policy.model.train()
    lengths = [int(x) for x in args.lengths.split(",")]
    N, T, P = len(lengths), max(lengths), args.prompt
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, 40000, (1, P), generator=gen).repeat(N, 1)
    comp = torch.randint(10, 40000, (N, T), generator=gen)
    c_mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    ids, mask = torch.cat([prompt, comp * c_mask], 1), torch.cat([torch.ones(N, P, dtype=torch.long), c_mask], 1)
    buckets = length_buckets(completion_widths(c_mask).tolist())
    work = sum(len(b) * max(lengths[i] for i in b) for b in buckets)
    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.repeats):
        for pack in (False, True) if rep % 2 == 0 else (True, False):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            lp = grouped_completion_logprobs(model, ids, mask, P, N, pack=pack)
            (lp * c_mask).sum().backward()
            times[pack].append(time.perf_counter() - t0)
            print(f"pack={pack}: {times[pack][-1]:.2f} s", flush=True)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"\nlengths {lengths}, prompt {P} (run once), buckets {buckets}; completion token-passes {N * T} padded, "
        f"{work} packed ({N * T / work:.2f}x fewer)"
    )
    print(f"| padded s | packed s | speed-up |\n|---|---|---|\n| {off:.2f} | {on:.2f} | {off / on:.2f}x |")


if __name__ == "__main__":
    main()
