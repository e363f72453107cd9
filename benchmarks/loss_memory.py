"""Peak memory and time of log-probs + GRPO loss + backward: naive PyTorch vs Liger-Kernel vs rlvr.

    python benchmarks/loss_memory.py                       # the docs/performance.md table (CPU, float32)
    python benchmarks/loss_memory.py --shapes 8,1024 --device cuda --dtype bfloat16

Variants (each measured in its own process, so peaks do not mix):

* ``naive``  — what TRL does: full logits ``hidden @ W.T`` in float32, TRL's
  ``selective_log_softmax`` (gather + per-row logsumexp), GRPO loss, autograd backward.
* ``liger``  — Liger-Kernel's ``LigerFusedLinearGRPOLoss`` (loss_type="grpo", beta=0.04,
  chunk_size=1, compiled=False). On the CPU it runs its PyTorch chunked path. Liger is not a
  dependency of rlvr: install it into a separate environment and pass its interpreter with
  ``--liger-python`` (default: ``.venv-bench/bin/python`` when present). Its worker also imports rlvr:
  ``python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 liger-kernel==0.8.5 -e .``
* ``rlvr``   — :func:`rlvr.kernels.token_logprobs` then the same GRPO loss, autograd backward.

Memory: on the CPU, peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``)
minus the resident memory once inputs are built and a small warm-up has run; glibc is told to
``mmap`` every block above 128 KiB so freed memory really leaves the process. On CUDA,
``torch.cuda.max_memory_allocated`` minus the allocation before the step. The gradients
(``dL/dhidden``, ``dL/dW``) are outputs every variant must produce and are counted in every peak.

Same numbers: each worker saves its loss and gradients; the parent reports the largest relative
difference (``|a - b|_2 / |b|_2``) of every variant against the naive one (or rlvr when naive is
skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BETA, EPS = 0.04, 0.2


# ------------------------------------------------------------------------------------------------
# memory probes
# ------------------------------------------------------------------------------------------------
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) / 1024.0


class Probe:
    """Peak memory above a baseline: host RSS on the CPU, allocator peak on CUDA."""

    def __init__(self, device: str):
        self.device = device

    def reset(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = _status_mb("VmRSS")

    def peak_above(self) -> float:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20 - self.base
        return _status_mb("VmHWM") - self.base


# ------------------------------------------------------------------------------------------------
# the shared problem
# ------------------------------------------------------------------------------------------------
def make_inputs(N: int, T: int, H: int, V: int, dtype, device: str, seed: int = 0):
    """hidden [N,T,H], weight [V,H] (both require grad), targets, mask, advantages, old/ref log-probs."""
    import torch

    from rlvr.kernels import token_logprobs

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, T, H, generator=g).to(device=device, dtype=dtype)
    weight = (torch.randn(V, H, generator=g) * H**-0.5).to(device=device, dtype=dtype)
    targets = torch.randint(0, V, (N, T), generator=g).to(device)
    lengths = torch.randint(T // 2, T + 1, (N,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float().to(device)
    adv = torch.randn(N, generator=g).to(device)
    with torch.no_grad():  # old / ref log-probs near the current ones, identical in every worker
        lp = token_logprobs(hidden, weight, targets, chunk_tokens=1024)
    old = (lp + 0.05 * torch.randn(N, T, generator=g).to(device)).float()
    ref = (lp + 0.05 * torch.randn(N, T, generator=g).to(device)).float()
    del lp
    return hidden.requires_grad_(True), weight.requires_grad_(True), targets, mask, adv, old, ref


def grpo_loss(logps, mask, adv, old, ref):
    """TRL / Liger "grpo": clipped ratio + beta * k3 KL, mean over each sequence, mean over sequences."""
    import torch

    coef1 = torch.exp(logps - old)
    coef2 = torch.clamp(coef1, 1 - EPS, 1 + EPS)
    per_tok = -torch.min(coef1 * adv[:, None], coef2 * adv[:, None])
    per_tok = per_tok + BETA * (torch.exp(ref - logps) - (ref - logps) - 1.0)
    return ((per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / logps.shape[0]


def selective_log_softmax(logits, index):
    """TRL's selective_log_softmax: float32/64 — gather, then a logsumexp per batch row;
    16-bit — a log_softmax per batch row (in the logits' dtype), then gather."""
    import torch

    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return selected - lse
    rows = [torch.log_softmax(r, dim=-1).gather(-1, i.unsqueeze(-1)).squeeze(-1) for r, i in zip(logits, index)]
    return torch.stack(rows)


def step(variant: str, hidden, weight, targets, mask, adv, old, ref, chunk_tokens: int):
    """loss and (dL/dhidden, dL/dW) for one variant."""
    import torch

    if variant == "naive":
        logits = torch.nn.functional.linear(hidden, weight).float()
        logps = selective_log_softmax(logits, targets)
        loss = grpo_loss(logps, mask, adv, old, ref)
    elif variant == "rlvr":
        from rlvr.kernels import token_logprobs

        logps = token_logprobs(hidden, weight, targets, chunk_tokens=chunk_tokens)
        loss = grpo_loss(logps, mask, adv, old, ref)
    elif variant == "liger":
        loss, _metrics = step.liger(
            hidden, weight, targets, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old
        )
    else:
        raise ValueError(variant)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    return loss.detach(), gh, gw


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    N, T, H, V = (int(x) for x in args.shape.split(","))
    if args.variant == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        step.liger = LigerFusedLinearGRPOLoss(
            beta=BETA,
            compiled=False,
            use_ref_model=True,
            chunk_size=1,
            epsilon_low=EPS,
            epsilon_high=EPS,
            loss_type="grpo",
            temperature=1.0,
        )
    inputs = make_inputs(N, T, H, V, dtype, args.device)
    # warm-up on a slice (thread pools, allocator, first-call paths) without paying a full step
    w = min(T, 256)
    hidden, weight, targets, mask, adv, old, ref = inputs
    small = (
        hidden[:1, :w].detach().requires_grad_(True),
        weight,
        targets[:1, :w],
        mask[:1, :w],
        adv[:1],
        old[:1, :w],
        ref[:1, :w],
    )
    step(args.variant, *small, chunk_tokens=args.chunk_tokens)
    del small
    probe = Probe(args.device)
    best, peak = float("inf"), 0.0
    for i in range(args.repeats):
        probe.reset()
        t0 = time.perf_counter()
        loss, gh, gw = step(args.variant, *inputs, chunk_tokens=args.chunk_tokens)
        if args.device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, probe.peak_above())
        if i != args.repeats - 1:
            del loss, gh, gw
    if args.save:
        torch.save({"loss": loss.double().cpu(), "gh": gh.double().cpu(), "gw": gw.double().cpu()}, args.save)
    print("RESULT " + json.dumps({"variant": args.variant, "peak_mb": peak, "time_s": best, "loss": float(loss)}))


# ------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------
def _liger_python(arg: str | None) -> str | None:
    cands = [arg] if arg else [str(ROOT / ".venv-bench" / "bin" / "python"), sys.executable]
    for py in cands:
        py = shutil.which(py) if py else None
        if py:
            # the liger worker builds its inputs with rlvr's kernels too, so both must import there
            check = "import liger_kernel.chunked_loss, rlvr.kernels"
            ok = subprocess.run([py, "-c", check], capture_output=True).returncode == 0
            if ok:
                return py
    return None


def run_variant(variant: str, shape: str, args, save: str | None) -> dict | None:
    py = args.liger_python if variant == "liger" else sys.executable
    if py is None:
        return None
    cmd = [
        py,
        __file__,
        "--worker",
        variant,
        "--shape",
        shape,
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--chunk-tokens",
        str(args.chunk_tokens),
        "--threads",
        str(args.threads),
    ]
    if save:
        cmd += ["--save", save]
    return run_worker(cmd, f"{variant} {shape}")


def run_worker(cmd: list, label: str) -> dict | None:
    """Run one measuring process (glibc returning freed blocks, rlvr importable); its RESULT line."""
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_="131072",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not line:
        print(f"  [{label}] failed (rc={res.returncode}): {res.stderr.strip()[-800:]}", file=sys.stderr)
        return None
    return json.loads(line[-1][7:])


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        return int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) / 1024.0


def rel_diff(a: str, b: str) -> float:
    import torch

    x, y = torch.load(a), torch.load(b)
    return max(float((x[k] - y[k]).norm() / y[k].norm().clamp_min(1e-30)) for k in ("loss", "gh", "gw"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=["8,1024", "1,16384"], help="N,T pairs (H, V from --hv)")
    ap.add_argument("--hv", default="576,49152", help="hidden size, vocabulary (SmolLM2-135M)")
    ap.add_argument(
        "--series",
        nargs="*",
        default=["2048", "8192", "16384"],
        help="T values for the N=1 growth series (rlvr and liger only)",
    )
    ap.add_argument("--variants", nargs="*", default=["naive", "liger", "rlvr"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--chunk-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--liger-python", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shape", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(Namespace(args))
    args.liger_python = _liger_python(args.liger_python) if "liger" in args.variants else None
    if "liger" in args.variants and args.liger_python is None:
        print(
            "liger-kernel and rlvr not both importable (pass --liger-python, or set up .venv-bench as the module "
            "docstring says); skipping liger",
            file=sys.stderr,
        )
    H, V = (int(x) for x in args.hv.split(","))
    tmp = tempfile.mkdtemp(prefix="rlvr-loss-bench-")
    print(
        f"# loss_memory: log-probs + GRPO loss + backward, H={H}, V={V}, {args.dtype} on {args.device}; "
        f"peak memory above the inputs (MiB), time of one step (s)"
    )
    print(f"# command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    rows = []
    for nt in args.shapes:
        N, T = (int(x) for x in nt.split(","))
        shape = f"{N},{T},{H},{V}"
        res = {}
        for v in args.variants:
            need_mb = 4.0 * N * T * V * 4 / 2**20
            if v == "naive" and args.device == "cpu" and need_mb > 0.9 * _mem_available_mb():
                print(
                    f"  [naive {shape}] skipped: needs ~{need_mb:.0f} MiB, {_mem_available_mb():.0f} available",
                    file=sys.stderr,
                )
                continue
            r = run_variant(v, shape, args, os.path.join(tmp, f"{v}-{N}-{T}.pt"))
            if r:
                res[v] = r
        base = "naive" if "naive" in res else "rlvr"
        for v, r in res.items():
            r["rel_diff"] = rel_diff(os.path.join(tmp, f"{v}-{N}-{T}.pt"), os.path.join(tmp, f"{base}-{N}-{T}.pt"))
        rows.append(((N, T), res, base))
        for f in Path(tmp).glob(f"*-{N}-{T}.pt"):
            f.unlink()
    print()
    print(
        "| N x T | variant | peak MiB | time s | peak vs naive | peak vs liger | time vs liger | rel. diff vs "
        + "naive |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (N, T), res, base in rows:
        for v, r in res.items():
            pn = f"{res['naive']['peak_mb'] / r['peak_mb']:.1f}x less" if "naive" in res and v != "naive" else "-"
            pl = f"{r['peak_mb'] / res['liger']['peak_mb']:.2f}x" if "liger" in res and v != "liger" else "-"
            tl = f"{r['time_s'] / res['liger']['time_s']:.2f}x" if "liger" in res and v != "liger" else "-"
            print(
                f"| {N} x {T} | {v} | {r['peak_mb']:.0f} | {r['time_s']:.2f} | {pn} | {pl} | {tl} | "
                f"{r['rel_diff']:.1e}{'' if base == 'naive' else ' (vs rlvr)'} |"
            )
    if args.series:
        print()
        print("| N x T | variant | peak MiB | of which dL/dhidden | peak minus dL/dhidden | time s |")
        print("|---|---|---:|---:|---:|---:|")
        done = {(N, T): res for (N, T), res, _ in rows}
        for T in (int(x) for x in args.series):
            for v in [x for x in ("liger", "rlvr") if x in args.variants]:
                r = done.get((1, T), {}).get(v) or run_variant(v, f"1,{T},{H},{V}", args, None)
                if not r:
                    continue
                dh = T * H * 4 / 2**20
                print(
                    f"| 1 x {T} | {v} | {r['peak_mb']:.0f} | {dh:.0f} | {r['peak_mb'] - dh:.0f} | {r['time_s']:.2f} |"
                )


class Namespace(argparse.Namespace):
    def __init__(self, a):
        super().__init__(**vars(a))
        self.variant = a.worker


if __name__ == "__main__":
    main()
