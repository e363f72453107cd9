"""Peak GPU memory of a GRPO step of a Llama-3.1-8B-shaped LoRA policy at long context.

    python benchmarks/gpu_memory.py                       # on a CUDA machine (about 80 GB)
    python benchmarks/gpu_memory.py --tiny --device cpu   # a quick check of the script itself

The seed scenario scaled to one GPU: random bf16 weights with Llama-3.1-8B's shape (hidden 4096,
32 layers, 32 heads, 8 KV heads, intermediate 14336, vocabulary 128256, untied head), LoRA
adapters (peft, r=16, every linear projection; base and head frozen), and rollouts of
``--generations`` completions whose prompt + completion is ``--context`` tokens. One step runs the
generations ``--micro-batch`` at a time (gradients accumulate), so the peak is that of one
micro-batch. Variants, all in one process (the weights are shared; the allocator's peak is reset
between them, and a variant that runs out of memory is reported as OOM):

* ``trl``      — full logits (``logits_to_keep``), TRL's ``selective_log_softmax``;
* ``rlvr``     — :func:`rlvr.kernels.completion_logprobs` (chunked fused-linear log-probs, Triton);
* ``+gc``      — gradient checkpointing of the decoder layers;
* ``+offload`` — saved activations (with ``+gc``: each layer's input) in pinned host memory.

Reported: the allocator's peak during the step (``max_memory_allocated``), with the weights
included and above them, and the step's time.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loss_memory import grpo_loss, selective_log_softmax  # noqa: E402

LLAMA31_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    hidden_act="silu",
)
TINY = dict(
    LLAMA31_8B,
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def build(args):
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**(TINY if args.tiny else LLAMA31_8B))
    cfg._attn_implementation = "sdpa"
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    model.train()
    if args.device != "cuda":
        model.float()  # CPU check: float32
    return model, cfg


def step(model, variant: str, ids, P: int, micro: int, chunk_tokens: int, max_micro: int = 0) -> int:
    """Runs the step's first ``max_micro`` micro-batches (0 = all); returns the completions done."""
    import torch

    from rlvr.modeling import completion_logprobs, offload_activations, position_ids_from_mask

    N, L = ids.shape
    T = L - P
    g = torch.Generator().manual_seed(2)
    adv = torch.randn(N, generator=g).to(ids.device)
    ref = (-torch.rand(N, T, generator=g) * 3).to(ids.device)
    cmask = torch.ones(N, T, device=ids.device)
    offload = "+offload" in variant
    done = 0
    for k, s in enumerate(range(0, N, micro)):
        if max_micro and k >= max_micro:
            break
        e = min(s + micro, N)
        mask = torch.ones_like(ids[s:e])
        ctx = offload_activations(model) if offload else contextlib.nullcontext()
        with ctx:
            if variant.startswith("rlvr"):
                lp = completion_logprobs(model, ids[s:e], mask, P, chunk_tokens=chunk_tokens)
            else:
                logits = model(
                    input_ids=ids[s:e],
                    attention_mask=mask,
                    position_ids=position_ids_from_mask(mask),
                    logits_to_keep=T + 1,
                    use_cache=False,
                ).logits[:, :-1]
                lp = selective_log_softmax(logits, ids[s:e, P:]).float()
                del logits
            loss = grpo_loss(lp, cmask[s:e], adv[s:e], lp.detach(), ref[s:e]) * (e - s) / N
        loss.backward()
        del lp, loss
        done = e
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--runs",
        nargs="*",
        default=[
            "rlvr+gc+offload@1",
            "rlvr+gc@1",
            "trl+gc+offload@1",
            "trl+gc@1",
            "rlvr@1",
            "trl@1",
            "rlvr+gc+offload@8",
            "rlvr+gc@8",
            "trl+gc+offload@8",
        ],
        help="VARIANT@MICRO_BATCH (completions per forward/backward)",
    )
    ap.add_argument(
        "--micro-batches-run",
        type=int,
        default=1,
        help="micro-batches actually run per variant (each has the same peak; 0 = the whole step)",
    )
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--context", type=int, default=20480)
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--chunk-tokens", type=int, default=1024)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model and short context, to check the script")
    args = ap.parse_args()
    import torch

    from rlvr.modeling import enable_gradient_checkpointing

    if args.tiny:
        args.context, args.prompt_len, args.generations = min(args.context, 96), min(args.prompt_len, 32), 2
    cuda = args.device == "cuda"
    model, cfg = build(args)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.generations, args.context), generator=g).to(args.device)
    gib = 2**30
    weights = torch.cuda.memory_allocated() / gib if cuda else 0.0
    print(
        f"# gpu_memory: Llama-3.1-8B-shaped{' (tiny)' if args.tiny else ''} {args.dtype}, LoRA r=16, "
        f"{args.generations} generations x {args.context} tokens (prompt {args.prompt_len}); "
        f"weights + LoRA + inputs: {weights:.1f} GiB; device: "
        f"{torch.cuda.get_device_name() if cuda else args.device}"
    )
    print(f"# command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print()
    print("| variant | micro-batch | peak GiB (total) | peak GiB above weights | time s per completion |")
    print("|---|---:|---:|---:|---:|")
    gc_on = None
    for run in args.runs:
        v, micro = run.split("@")[0], int(run.split("@")[1]) if "@" in run else args.generations
        want_gc = "+gc" in v
        if want_gc != gc_on:
            if want_gc:
                enable_gradient_checkpointing(model)
            else:
                model.get_base_model().gradient_checkpointing_disable()
            gc_on = want_gc
        model.zero_grad(set_to_none=True)
        base = 0.0
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / gib
        t0 = time.perf_counter()
        try:
            done = step(model, v, ids, args.prompt_len, micro, args.chunk_tokens, args.micro_batches_run)
            if cuda:
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / done
            peak = torch.cuda.max_memory_allocated() / gib if cuda else float("nan")
            print(f"| {v} | {micro} | {peak:.1f} | {peak - base:.1f} | {dt:.2f} |", flush=True)
        except (torch.OutOfMemoryError, RuntimeError) as exc:  # pinned host buffers fail as AcceleratorError
            if "out of memory" not in str(exc).lower():
                raise
            total = torch.cuda.get_device_properties(0).total_memory / gib
            print(f"| {v} | {micro} | OOM (> {total:.0f}) | - | - |", flush=True)
        model.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
