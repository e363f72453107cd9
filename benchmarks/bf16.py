"""bfloat16 on a CPU with AVX512-BF16: generation and the update, against float32, in one process.

    python benchmarks/bf16.py                  # SmolLM2-135M, 2 prompts x 8 completions, 32 new tokens, 3 repeats

Generation: ``engine.decode_dtype=bfloat16`` (the fast decoder's packed matmuls in bfloat16, float32
master weights, KV cache and attention) against float32, same prompts and seeds, alternating. Printed:
seconds per generate, ms per decode step, and how far the bf16 sampler is from the trainer: the
token-level importance ratio exp(trainer log-prob - sampling log-prob) over the completion tokens
(mean, min, max; the trainer reweights by it, capped at 3). Update: forward + backward of the
completions' log-probs (the trainer's packed path) in float32 and under ``torch.autocast("cpu",
dtype=torch.bfloat16)`` (float32 master weights and gradients), and the largest log-prob difference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import rlvr
    from rlvr.modeling.shared_prompt import grouped_completion_logprobs
    from rlvr.plugins.engines.hf import HFEngine, HFEngineConfig

    policy = rlvr.create("model", "smollm2")
    task = rlvr.create("task", "arithmetic")
    prompts = [task.render(r, policy.tokenizer) for r in task.train_rows[:2]]
    engines = {
        d: HFEngine(HFEngineConfig(max_new_tokens=args.max_new, decode_dtype=d)) for d in ("float32", "bfloat16")
    }
    gen = {d: [] for d in engines}
    ratios = []
    upd = {"float32": [], "bfloat16": []}
    diffs = []
    for rep in range(args.repeats):
        outs = {}
        for d in ("float32", "bfloat16") if rep % 2 == 0 else ("bfloat16", "float32"):
            t0 = time.perf_counter()
            outs[d] = engines[d].generate(policy, prompts, 8, [rep, rep + 100])
            gen[d].append((time.perf_counter() - t0, int(outs[d].completion_mask.sum(1).max())))
        ro = outs["bfloat16"]
        ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
        mask = torch.cat([ro.prompt_mask, ro.completion_mask], 1)
        P, m = ro.prompt_ids.shape[1], ro.completion_mask.bool()
        with torch.no_grad():
            trainer_lp = grouped_completion_logprobs(policy.model, ids, mask, P, 8, pack=True)
        ratios.append(torch.exp(trainer_lp - ro.sampling_logps)[m])
        policy.model.train()
        lps = {}
        for d in ("float32", "bfloat16") if rep % 2 == 0 else ("bfloat16", "float32"):
            policy.model.zero_grad(set_to_none=True)
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=d == "bfloat16")
            t0 = time.perf_counter()
            with ctx:
                lp = grouped_completion_logprobs(policy.model, ids, mask, P, 8, pack=True)
            (lp.float() * m).sum().backward()
            upd[d].append(time.perf_counter() - t0)
            lps[d] = lp.detach().float()
        diffs.append(float(((lps["bfloat16"] - lps["float32"]).abs() * m).max()))
        policy.model.zero_grad(set_to_none=True)
        policy.model.eval()
    print(
        f"SmolLM2-135M, 2 prompts x 8 completions, max {args.max_new} new tokens, {args.threads} threads, "
        f"{args.repeats} repeats (medians)\n"
    )
    print("| | float32 | bfloat16 | bf16 speed-up |")
    print("|---|---|---|---|")
    g32, g16 = (statistics.median(t for t, _ in gen[d]) for d in ("float32", "bfloat16"))
    ms32, ms16 = (1e3 * sum(t for t, _ in gen[d]) / sum(n for _, n in gen[d]) for d in ("float32", "bfloat16"))
    u32, u16 = statistics.median(upd["float32"]), statistics.median(upd["bfloat16"])
    print(f"| generate, s | {g32:.2f} | {g16:.2f} | {g32 / g16:.2f}x |")
    print(f"| ms per decode step | {ms32:.1f} | {ms16:.1f} | {ms32 / ms16:.2f}x |")
    print(f"| update forward+backward, s | {u32:.2f} | {u16:.2f} | {u32 / u16:.2f}x |")
    r = torch.cat(ratios)
    print(
        f"\nbf16 sampler vs float32 trainer, importance ratio per token: mean {float(r.mean()):.4f}, "
        f"min {float(r.min()):.3f}, max {float(r.max()):.3f}, above the cap 3: {float((r > 3).float().mean()):.2%}"
    )
    print(f"update under autocast: largest |log-prob difference| vs float32 {max(diffs):.3f}")


if __name__ == "__main__":
    main()
