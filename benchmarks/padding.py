"""Time saved by not computing on padding: decode compaction and packed (length-bucketed) updates.

    python benchmarks/padding.py                       # SmolLM2 on GSM8K, 2 prompts x 8 completions, 192 new tokens
    python benchmarks/padding.py --steps 2 --max-new 256

A GSM8K-style setting where completion lengths vary: SmolLM2-135M-Instruct (float32), ``task=gsm8k``
(``/work/shared/data/gsm8k`` or ``--data-dir``), the GSM8K reward suite, temperature 1. For each step the
same prompts and seeds are generated twice, with ``engine.compact_finished`` on and off (the tokens must be
the same), and the update's forward + backward (the GRPO loss, no optimizer step, so the weights do not
move) runs on those rollouts with ``trainer.pack_completions`` on and off. The variants alternate within
a step, so the machine's load hits both alike. Printed: seconds per variant, decode rows × steps run,
completion tokens against padded tokens, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REWARDS = "[gsm8k_xmlcount,gsm8k_soft_format,gsm8k_strict_format,gsm8k_int,gsm8k_correct]"


def build(args: argparse.Namespace):
    import rlvr

    overrides = [
        "model=smollm2",
        "task=gsm8k",
        f"task.data_dir={args.data_dir}",
        f"reward={REWARDS}",
        f"engine.max_new_tokens={args.max_new}",
        f"trainer.prompts_per_step={args.prompts}",
        f"trainer.num_generations={args.generations}",
        f"trainer.threads={args.threads}",
        "trainer.progress=false",
        "trainer.eval_steps=0",
        f"trainer.seed={args.seed}",
        f"trainer.output_dir={tempfile.mkdtemp(prefix='rlvr-padding-')}",
        *args.override,
    ]
    return rlvr.Trainer(rlvr.compose(overrides))


def timed_generation(trainer, step: int, compact: bool):
    trainer.engine.cfg.compact_finished = compact
    t0 = time.perf_counter()
    batch = trainer.rollout(step)
    return batch, time.perf_counter() - t0, trainer.engine.decode_rows


def timed_update(trainer, batch, pack: bool) -> float:
    trainer.tc.pack_completions = pack
    trainer.policy.model.train()
    t0 = time.perf_counter()
    for sl in batch.slices:
        value, _ = trainer.micro_batch_loss(batch, sl)
        value.backward()
    dt = time.perf_counter() - t0
    trainer.optimizer.zero_grad(set_to_none=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=192)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--data-dir", default=os.environ.get("RLVR_GSM8K_DIR", str(ROOT.parent / "shared" / "data" / "gsm8k"))
    )
    ap.add_argument("--override", action="append", default=[], help="extra rlvr config override (repeatable)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    trainer = build(args)
    rows = []
    for step in range(1, args.steps + 1):
        r: dict = {"step": step}
        order = (True, False) if step % 2 else (False, True)
        batches = {}
        sampler = trainer.sampler.state_dict()  # both variants draw the same prompts
        for compact in order:
            trainer.sampler.load_state_dict(sampler)
            batches[compact], r[f"gen_s_{compact}"], r[f"decode_rows_{compact}"] = timed_generation(
                trainer, step, compact
            )
        a, b = batches[True].rollouts, batches[False].rollouts
        r["same_tokens"] = bool(torch.equal(a.completion_ids, b.completion_ids))
        batch = batches[True]
        trainer.score(batch)
        trainer.compute_advantages(batch)
        trainer.reference_logprobs(batch)
        lengths = a.completion_mask.sum(1)
        r.update(
            tokens=int(lengths.sum()),
            padded=int(a.completion_mask.numel()),
            min_len=int(lengths.min()),
            max_len=int(lengths.max()),
            decode_steps=int(lengths.max()),
            reward=float(batch.total.mean()),
        )
        for pack in order:
            r[f"update_s_{pack}"] = timed_update(trainer, batch, pack)
        rows.append(r)
        print(json.dumps(r), flush=True)

    def med(key: str) -> float:
        return statistics.median(x[key] for x in rows)

    lo, hi = min(x["min_len"] for x in rows), max(x["max_len"] for x in rows)
    real = sum(x["tokens"] for x in rows) / sum(x["padded"] for x in rows)
    print(
        f"\n{args.prompts} prompts x {args.generations} completions, max {args.max_new} new tokens, {args.steps} "
        f"steps, {args.threads} threads; completion lengths {lo}–{hi}, {real:.0%} of the padded tokens are real; "
        f"same tokens with and without compaction: {all(x['same_tokens'] for x in rows)}"
    )
    print("\n| phase | padded (off) s | skipping padding (on) s | saved |")
    print("|---|---|---|---|")
    for name, key in (("generation (compact_finished)", "gen_s"), ("update fwd+bwd (pack_completions)", "update_s")):
        off, on = med(f"{key}_False"), med(f"{key}_True")
        print(f"| {name} | {off:.2f} | {on:.2f} | {1 - on / off:.0%} ({off / on:.2f}x) |")
    print(
        f"\ndecode rows x steps (median): {med('decode_rows_False'):.0f} without compaction, "
        f"{med('decode_rows_True'):.0f} with"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
