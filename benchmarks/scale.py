"""Scaling numbers: steps/s for 1 vs 2 processes on the CPU, and LoRA vs QLoRA throughput and memory on a GPU.

    python benchmarks/scale.py cpu                      # rlvr train with 1 process vs torchrun --nproc-per-node 2 (gloo)
    python benchmarks/scale.py cpu --steps 6 -- model.hidden_size=256 engine.max_new_tokens=64
    python benchmarks/scale.py gpu                      # Llama-3.1-8B-shaped LoRA (bf16) vs QLoRA (NF4) + a 70B QLoRA
    python benchmarks/scale.py gpu --variants lora:llama-3.1-8b,qlora:llama-3.1-8b --new-tokens 64

``cpu``: the same config, global batch and seed three ways: one process with one thread, one process with
two threads, and ``torchrun --nproc-per-node 2`` (one thread each, gloo). Steps/s is 1 / the mean
``step_time`` of ``metrics.jsonl`` over the steps after the first (rank 0's step time, which includes
waiting for the other rank at every collective). The defaults use a small random Llama (``model=tiny``
made wider) so that compute, not start-up, dominates.

``gpu``: each variant in its own process (so peaks don't mix): a random-weight model of a real shape
(built layer by layer on the GPU: the 70B one never exists in 16-bit), LoRA r=16 on every linear layer of
the decoder, then ``trainer.train_step()`` of the real loop (hf engine generation, chunked log-probs,
GRPO loss, backward, AdamW) on the arithmetic task, with gradient checkpointing and micro-batches of 8.
Reported per variant: the weights' memory, the peak allocated memory over the steps, generation
tokens/s (completion tokens / generation time) and update tokens/s (prompt + completion tokens of the
batch / (step time - generation time)), from the last step (the first one warms up). Weights are random:
completions run to ``--new-tokens`` (EOS is improbable), which is what a throughput measurement wants.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------
# CPU: 1 vs 2 processes
# ------------------------------------------------------------------------------------------------
CPU_DEFAULTS = [
    "model=tiny",
    "model.lora=true",
    "model.hidden_size=256",
    "model.intermediate_size=768",
    "model.num_layers=4",
    "model.num_heads=8",
    "model.num_kv_heads=4",
    "trainer.prompts_per_step=4",
    "trainer.num_generations=4",
    "engine.max_new_tokens=48",
    "trainer.progress=false",
    "trainer.warmup_steps=0",
    "trainer.lr=1e-3",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_run(label: str, launcher: list[str], threads: int, overrides: list[str], run_dir: Path) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(threads)}
    cmd = [*launcher, "-m", "rlvr", "train", *overrides, f"trainer.threads={threads}", f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows
    step = sum(r["step_time"] for r in timed) / len(timed)
    return {
        "label": label,
        "steps_per_s": 1.0 / step,
        "step_time_s": step,
        "wall_s": wall,
        "reward_mean_last": rows[-1]["reward/mean"],
    }


def cmd_cpu(args: argparse.Namespace) -> None:
    overrides = [*CPU_DEFAULTS, f"trainer.max_steps={args.steps}", *args.overrides]
    one = [sys.executable]
    two = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
    ]
    ways = [
        ("1 process, 1 thread", one, 1),
        ("1 process, 2 threads", one, 2),
        ("2 processes (gloo), 1 thread each", two, 1),
    ]
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in ways}
    same = True
    with tempfile.TemporaryDirectory(prefix="rlvr-scale-") as tmp:
        for rep in range(args.repeats):  # interleaved, order reversed every other round: drift hits all alike
            for i, (label, launcher, threads) in enumerate(ways if rep % 2 == 0 else ways[::-1]):
                run_dir = Path(tmp) / f"{rep}-{i}"
                runs[label].append(_cpu_run(label, launcher, threads, overrides, run_dir))
                if label.startswith("1 process, 1"):
                    ref = run_dir
            for i, (label, _, _) in enumerate(ways if rep % 2 == 0 else ways[::-1]):
                if label.startswith("2 processes"):
                    same &= (Path(tmp) / f"{rep}-{i}" / "completions.jsonl").read_text() == (
                        ref / "completions.jsonl"
                    ).read_text()
    print(
        f"CPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.repeats} interleaved repeats; "
        f"overrides: {' '.join(overrides)}"
    )
    print(f"{'run':<36} {'steps/s (median)':>17} {'min':>7} {'max':>7}")
    median = {}
    for label, rs in runs.items():
        v = sorted(r["steps_per_s"] for r in rs)
        median[label] = v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])
        print(f"{label:<36} {median[label]:>17.3f} {v[0]:>7.3f} {v[-1]:>7.3f}")
    a, b, c = (median[label] for label, _, _ in ways)
    print(f"2 processes vs 1 process/1 thread: {c / a:.2f}x; vs 1 process/2 threads: {c / b:.2f}x")
    print(f"1-process and 2-process completions identical: {same}")
    print(json.dumps({"cpu": runs, "same_completions": same}))


# ------------------------------------------------------------------------------------------------
# GPU: LoRA vs QLoRA
# ------------------------------------------------------------------------------------------------
SHAPES = {
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
        rope_theta=500000.0,
    ),
    "llama-3.1-70b": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
        rope_theta=500000.0,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=False,
    ),  # a smoke test of the script
}


def _quantize_linears(module, dtype, device) -> None:
    """Replace every nn.Linear under ``module`` by a bitsandbytes NF4 Linear4bit (double quantization)."""
    import bitsandbytes as bnb
    import torch

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=dtype,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                q.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4"
                ).to(device)
                if child.bias is not None:
                    q.bias = child.bias
                setattr(parent, name, q)


def build_random(shape: str, quantize: bool, device: str, dtype_name: str, tokenizer):
    """A random-weight LlamaForCausalLM of ``shape``, materialised one decoder layer at a time (NF4 at once
    when ``quantize``), so a model whose 16-bit weights do not fit is never whole in 16-bit."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, dtype_name)
    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    gen = torch.Generator(device=device).manual_seed(0)

    def materialise(module) -> None:
        module.to_empty(device=device)
        with torch.no_grad():
            for p in module.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02, generator=gen)
                else:
                    p.fill_(1.0)

    for layer in model.model.layers:
        materialise(layer)
        if quantize:
            _quantize_linears(layer, dtype, device)
    for module in (model.model.embed_tokens, model.model.norm, model.lm_head):
        materialise(module)
    with torch.device(device):  # the rotary tables are computed at construction (buffers, not parameters)
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    if quantize:
        model.is_loaded_in_4bit = True  # what transformers sets on a bitsandbytes-loaded model (peft reads it)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def gpu_worker(spec: dict) -> dict:
    import torch

    from rlvr.core.config import TrainerConfig
    from rlvr.core.policy import ModelConfig, finish_policy
    from rlvr.core.trainer import Trainer
    from rlvr.plugins.models.tiny import byte_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    tok = byte_tokenizer()  # ids beyond its 259 tokens decode to nothing: fine for a throughput run
    t0 = time.perf_counter()
    quant = spec["variant"] == "qlora"
    model = build_random(spec["shape"], quant, device, spec["dtype"], tok)
    policy = finish_policy(
        model,
        tok,
        ModelConfig(dtype=spec["dtype"], lora=True, load_in_4bit=quant, lora_r=16, lora_alpha=32),
        name=f"random-{spec['shape']}",
    )
    build_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize()
        weights_gb = torch.cuda.memory_allocated() / 2**30
    else:
        weights_gb = float("nan")
    tc = TrainerConfig(
        prompts_per_step=spec["prompts"],
        num_generations=spec["generations"],
        max_steps=spec["steps"],
        micro_batch_size=spec["micro_batch"],
        gradient_checkpointing=True,
        warmup_steps=0,
        lr=1e-5,
        progress=False,
        log_steps=0,
    )
    cfg = {
        "trainer": tc,
        "task": {"name": "arithmetic"},
        "loss": {"name": "grpo"},
        "logger": {},
        "engine": {"name": "hf", "max_new_tokens": spec["new_tokens"], "max_prompt_length": 256},
        "model": {"name": "hf"},
    }

    def varied(completions, **_):
        return [float(len(c) % 7) for c in completions]

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, rewards=[varied], run_dir=tmp, policy=policy)
        rows = []
        for _ in range(spec["steps"]):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            m = trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            rows.append(m)
    last = rows[-1]
    n = spec["prompts"] * spec["generations"]
    update_s = last["step_time"] - last["generation_time"]
    trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
    return {
        **spec,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "build_s": build_s,
        "trainable_params_M": trainable / 1e6,
        "weights_GiB": weights_gb,
        "peak_GiB": (torch.cuda.max_memory_allocated() / 2**30) if cuda else float("nan"),
        "step_s": last["step_time"],
        "generation_s": last["generation_time"],
        "generation_tokens_per_s": last["tokens_per_s"],
        "completion_tokens": n * last["completion_length/mean"],
        "update_completion_tokens_per_s": n * last["completion_length/mean"] / max(update_s, 1e-9),
        "update_s": update_s,
        "reward_mean": last["reward/mean"],
    }


def cmd_gpu(args: argparse.Namespace) -> None:
    results = []
    for item in args.variants.split(","):
        variant, shape = item.split(":")
        spec = {
            "variant": variant,
            "shape": shape,
            "dtype": args.dtype,
            "prompts": args.prompts,
            "generations": args.generations,
            "new_tokens": args.new_tokens,
            "steps": args.steps,
            "micro_batch": args.micro_batch,
        }
        proc = subprocess.run(
            [sys.executable, __file__, "_gpu_worker", json.dumps(spec)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            err = proc.stderr.strip().splitlines()[-1:] or ["?"]
            print(f"{item}: failed: {err[0][:300]}", flush=True)
            results.append({**spec, "error": err[0][:300]})
            continue
        r = json.loads(lines[-1])
        results.append(r)
        print(
            f"{item:<22} weights {r['weights_GiB']:6.1f} GiB  peak {r['peak_GiB']:6.1f} GiB  "
            f"generation {r['generation_tokens_per_s']:8.0f} tok/s  update {r['update_completion_tokens_per_s']:7.0f} "
            f"completion tok/s  step {r['step_s']:.1f} s  (build {r['build_s']:.0f} s, {r['device']})",
            flush=True,
        )
    print(json.dumps({"gpu": results}))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_gpu_worker":
        print(json.dumps(gpu_worker(json.loads(sys.argv[2]))), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cpu", help="steps/s: 1 process vs torchrun --nproc-per-node 2 (gloo)")
    c.add_argument("--steps", type=int, default=5)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("overrides", nargs="*", help="extra rlvr train overrides (after --)")
    g = sub.add_parser("gpu", help="LoRA vs QLoRA tokens/s and peak memory")
    g.add_argument("--variants", default="lora:llama-3.1-8b,qlora:llama-3.1-8b,qlora:llama-3.1-70b")
    g.add_argument("--dtype", default="bfloat16")
    g.add_argument("--prompts", type=int, default=4)
    g.add_argument("--generations", type=int, default=8)
    g.add_argument("--new-tokens", type=int, default=128)
    g.add_argument("--micro-batch", type=int, default=8)
    g.add_argument("--steps", type=int, default=2)
    g.add_argument("--timeout", type=int, default=400)
    args = ap.parse_args()
    {"cpu": cmd_cpu, "gpu": cmd_gpu}[args.cmd](args)


if __name__ == "__main__":
    main()
