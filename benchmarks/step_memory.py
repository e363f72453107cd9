"""Peak memory of one GRPO training step of SmolLM2-135M: rlvr's path against the TRL way.

    python benchmarks/step_memory.py                      # the docs/performance.md table (CPU, float32)
    python benchmarks/step_memory.py --device cuda --dtype bfloat16

One step = forward of the policy on given rollouts (``N`` completions of ``T`` tokens after a
``P``-token prompt), log-probs of the completion tokens, GRPO loss (beta=0.04, eps=0.2, old =
detached current log-probs, a fixed reference), backward. No optimizer (its state is the same for
both and is not activation memory).

* ``trl``  — as TRL's GRPOTrainer: ``model(input_ids, attention_mask, logits_to_keep=T+1).logits``,
  drop the last position, ``selective_log_softmax``.
* ``rlvr`` — :func:`rlvr.kernels.completion_logprobs` (decoder to the final hidden states, then the
  chunked fused-linear log-probs).

Each runs with and without gradient checkpointing (``+gc``), each in its own process.
The model is a random-weight ``LlamaForCausalLM`` with SmolLM2-135M's configuration (hidden 576,
30 layers, 9 heads, 3 KV heads, intermediate 1536, vocabulary 49152, tied embeddings): the same
memory as the real weights. Memory is measured as in ``loss_memory.py`` (peak RSS above the
resident memory after the model and rollouts exist, or the CUDA allocator's peak).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loss_memory import Probe, grpo_loss, run_worker, selective_log_softmax  # noqa: E402

SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    hidden_act="silu",
)


def build(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(SMOLLM2_135M)
    if args.layers:
        cfg["num_hidden_layers"] = args.layers
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(device=args.device, dtype=getattr(torch, args.dtype))
    model.config._attn_implementation = "sdpa"
    model.train()
    g = torch.Generator().manual_seed(1)
    N, P, T = args.n, args.prompt_len, args.completion_len
    ids = torch.randint(0, cfg["vocab_size"], (N, P + T), generator=g).to(args.device)
    mask = torch.ones_like(ids)
    cmask = (torch.arange(T)[None, :] < torch.randint(T // 2, T + 1, (N,), generator=g)[:, None]).float()
    cmask[0] = 1
    adv = torch.randn(N, generator=g)
    ref = -torch.rand(N, T, generator=g) * 3
    return model, ids, mask, cmask.to(args.device), adv.to(args.device), ref.to(args.device)


def logps_of(variant: str, model, ids, mask, P: int, chunk_tokens: int):
    if variant == "rlvr":
        from rlvr.modeling import completion_logprobs

        return completion_logprobs(model, ids, mask, P, chunk_tokens=chunk_tokens)
    from rlvr.modeling import position_ids_from_mask

    T = ids.shape[1] - P
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        logits_to_keep=T + 1,
        use_cache=False,
    ).logits
    logits = logits[:, :-1, :]
    return selective_log_softmax(logits, ids[:, P:]).float()


def one_step(variant: str, model, ids, mask, cmask, adv, ref, P: int, micro: int, chunk_tokens: int):
    """forward + loss + backward over micro-batches of ``micro`` completions; grads accumulate."""
    import torch

    N = ids.shape[0]
    total = 0.0
    for s in range(0, N, micro):
        e = min(s + micro, N)
        lp = logps_of(variant, model, ids[s:e], mask[s:e], P, chunk_tokens)
        loss = grpo_loss(lp, cmask[s:e], adv[s:e], lp.detach(), ref[s:e]) * (e - s) / N
        loss.backward()
        total += float(loss)
        del lp, loss
    return torch.tensor(total)


def worker(args) -> None:
    import torch

    from rlvr.modeling import enable_gradient_checkpointing

    if args.threads:
        torch.set_num_threads(args.threads)
    variant, gc = args.worker.split("+")[0], args.worker.endswith("+gc")
    model, ids, mask, cmask, adv, ref = build(args)
    if gc:
        enable_gradient_checkpointing(model)
    P = args.prompt_len
    # warm-up on one short completion (first-call paths), then drop its gradients
    one_step(
        variant,
        model,
        ids[:1, : P + 16],
        mask[:1, : P + 16],
        cmask[:1, :16],
        adv[:1],
        ref[:1, :16],
        P,
        1,
        args.chunk_tokens,
    )
    model.zero_grad(set_to_none=True)
    probe = Probe(args.device)
    probe.reset()
    t0 = time.perf_counter()
    loss = one_step(variant, model, ids, mask, cmask, adv, ref, P, args.micro_batch or ids.shape[0], args.chunk_tokens)
    if args.device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = probe.peak_above()
    if args.save:
        flat = torch.cat([p.grad.reshape(-1).float().cpu() for p in model.parameters()])
        torch.save({"loss": loss.double(), "grad": flat}, args.save)
    print("RESULT " + json.dumps({"variant": args.worker, "peak_mb": peak, "time_s": dt, "loss": float(loss)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=["trl", "rlvr", "trl+gc", "rlvr+gc"])
    ap.add_argument("--n", type=int, default=8, help="completions in the step")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--completion-len", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=0, help="completions per forward/backward (0 = all)")
    ap.add_argument("--layers", type=int, default=0, help="override the layer count (quick checks)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    tmp = tempfile.mkdtemp(prefix="rlvr-step-bench-")
    print(
        f"# step_memory: SmolLM2-135M-shaped Llama{' (' + str(args.layers) + ' layers)' if args.layers else ''}, "
        f"{args.n} x ({args.prompt_len} prompt + {args.completion_len} completion) tokens, "
        f"micro-batch {args.micro_batch or args.n}, {args.dtype} on {args.device}"
    )
    print(f"# command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    res = {}
    for v in args.variants:
        cmd = [sys.executable, __file__, "--worker", v, "--save", os.path.join(tmp, v + ".pt")]
        for k in (
            "n",
            "prompt_len",
            "completion_len",
            "micro_batch",
            "layers",
            "dtype",
            "device",
            "chunk_tokens",
            "threads",
        ):
            cmd += ["--" + k.replace("_", "-"), str(getattr(args, k))]
        r = run_worker(cmd, v)
        if r:
            res[v] = r
    import torch

    def rel(a: str, b: str) -> float:
        x, y = torch.load(os.path.join(tmp, a + ".pt")), torch.load(os.path.join(tmp, b + ".pt"))
        return max(float((x[k] - y[k]).norm() / y[k].norm().clamp_min(1e-30)) for k in ("loss", "grad"))

    print()
    print("| variant | peak MiB | time s | peak vs TRL (same gc) | rel. diff of loss and grads vs TRL |")
    print("|---|---:|---:|---:|---:|")
    for v, r in res.items():
        peer = v.replace("rlvr", "trl")
        ratio = f"{res[peer]['peak_mb'] / r['peak_mb']:.2f}x less" if v.startswith("rlvr") and peer in res else "-"
        diff = f"{rel(v, peer):.1e}" if v.startswith("rlvr") and peer in res else "-"
        print(f"| {v} | {r['peak_mb']:.0f} | {r['time_s']:.1f} | {ratio} | {diff} |")
    for f in Path(tmp).glob("*.pt"):
        f.unlink()


if __name__ == "__main__":
    main()
