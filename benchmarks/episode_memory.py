"""Peak memory of multi-turn episodes vs the number of turns: KV-cache extension (engine=hf's path) vs the naive
re-prefill of the whole history every turn.

Each (session, turns) runs in a fresh process: the model is loaded, one untimed warm-up episode batch runs, the
process's peak resident set (VmHWM) is reset (``/proc/self/clear_refs``), then ``--prompts`` × ``--generations``
scripted guess-game episodes of exactly ``turns`` turns run (same tokens in both paths; the model computes every
logit). Reported, in MiB:

* ``anon_peak``: the peak of the anonymous resident memory (resident − file-backed, polled every millisecond by a
  thread) above its value just before the episodes: tensors, activations, allocator, without the memory-mapped
  weight files;
* ``kv``: the largest KV cache the session held (sum of its key/value tensors' bytes, sampled after every
  forward);
* ``anon_beyond_kv`` = anon_peak − kv: what memory costs besides the KV cache itself;
* ``peak`` (VmHWM − VmRSS just before the episodes) and ``beyond_kv``: the same from the kernel's high-water mark,
  which also counts the weight file's pages faulted in again when memory is short (noisier).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/episode_memory.py --model tiny --turns 2 4 8 16 --episode-tokens 720

With ``--episode-tokens N`` every episode holds about N tokens (sampled + inserted) whatever its number of turns
(each turn is padded with " ok"), so the KV cache stays the same size and only the number of turns changes. The children
run with ``MALLOC_MMAP_THRESHOLD_=65536`` (unless set): glibc then maps large blocks and returns them when freed,
so the resident set follows the live tensors instead of the allocator's free lists.

Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

MiB = 2**20


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class AnonPeak:
    """Peak anonymous resident memory (resident − file-backed pages, from /proc/self/statm), polled every
    ``interval`` seconds by a thread: unlike VmHWM it leaves out the model's memory-mapped weight files, whose
    pages the kernel may drop and fault in again under memory pressure."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval)

    def __enter__(self) -> AnonPeak:
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def cache_bytes(cache: Any) -> int:
    """Bytes held by a transformers DynamicCache's key/value tensors."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total


def turn_text(tok: Any, guess: int, tokens: int) -> str:
    """A guess, padded with " ok" until it is at least ``tokens`` tokens long."""
    text = f"My guess is {guess}."
    while len(tok(text, add_special_tokens=False)["input_ids"]) < tokens:
        text += " ok"
    return text


def one(model: str, session: str, turns: int, prompts: int, generations: int, total: int) -> dict[str, Any]:
    """Run one configuration in this process; returns its measurements."""
    import torch

    import rlvr
    from rlvr.core import episodes as E

    peak_kv = [0]
    forward = E._forward

    def watched(m: Any, ids: Any, mask: Any, pos: Any, cache: Any, last: Any = None) -> Any:
        out = forward(m, ids, mask, pos, cache, last)
        peak_kv[0] = max(peak_kv[0], cache_bytes(cache))
        return out

    E._forward = watched  # instrumentation only: the same forward, with the cache's size recorded after it
    policy = rlvr.create("model", model)
    tok = policy.tokenizer
    env = rlvr.create("env", "guess", max_turns=turns, max_tokens=8192)
    task = rlvr.create("task", "guess", low=1, high=100)
    rows = [dict(r, answer=100) for r in task.train_rows[:prompts]]  # never guessed: every turn is played
    n = prompts * generations
    per_turn = 0
    if total:  # sampled tokens per turn so that sampled + inserted ≈ total, whatever the number of turns
        end = tok.decode([tok.eos_token_id])
        hist = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]
        ins = 1 + len(
            tok(E.inserted_text(tok, hist, [{"role": "user", "content": "Lower."}], None, [end]))["input_ids"]
        )
        per_turn = max(1, (total - (turns - 1) * ins) // turns - 1)  # - 1: the end-of-turn token
    script = [[turn_text(tok, 10 + 3 * t % 80 + e % 5, per_turn) for t in range(turns)] for e in range(n)]
    warm = E.ScriptedSampler(tok, script[:generations], generations, tok.eos_token_id)
    E.run_episodes(policy, env, rows[:1], generations, [0], warm, 4096, 8192, session=session)
    peak_kv[0] = 0
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    base = _status("VmRSS")
    sampler = E.ScriptedSampler(tok, script, generations, tok.eos_token_id)
    with torch.no_grad(), AnonPeak() as anon:
        anon_base = anon.peak
        ro = E.run_episodes(policy, env, rows, generations, list(range(prompts)), sampler, 4096, 8192, session=session)
    peak = _status("VmHWM") - base
    anon_peak = anon.peak - anon_base
    assert all(e["turns"] == turns for e in ro.episodes)
    return {
        "model": model,
        "session": session,
        "turns": turns,
        "episodes": n,
        "tokens_per_episode": float(ro.attention_mask.sum(1).float().mean()),
        "sampled_per_episode": float(ro.completion_mask.sum(1).float().mean()),
        "prompt_tokens": int(ro.prompt_mask[0].sum()),
        "peak_mib": peak / MiB,
        "kv_mib": peak_kv[0] / MiB,
        "beyond_kv_mib": (peak - peak_kv[0]) / MiB,
        "anon_peak_mib": anon_peak / MiB,
        "anon_beyond_kv_mib": (anon_peak - peak_kv[0]) / MiB,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--turns", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--sessions", nargs="+", default=["kv", "reprefill"])
    ap.add_argument(
        "--episode-tokens",
        type=int,
        default=0,
        help="pad each turn so that an episode holds about this many tokens (sampled + inserted) whatever its "
        "number of turns (0: one short sentence per turn, so episodes grow with the turns)",
    )
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res = one(args.model, args.sessions[0], args.turns[0], args.prompts, args.generations, args.episode_tokens)
        print(json.dumps(res), flush=True)
        return
    rows = []
    for session in args.sessions:
        for turns in args.turns:
            cmd = [sys.executable, __file__, "--one", "--model", args.model, "--sessions", session]
            cmd += ["--turns", str(turns), "--prompts", str(args.prompts), "--generations", str(args.generations)]
            cmd += ["--episode-tokens", str(args.episode_tokens)]
            env = {**os.environ}
            env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # large blocks are mmapped, returned when freed
            env.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            out = out.strip().splitlines()[-1]
            rows.append(json.loads(out))
            print(out, flush=True)
    print(
        "| session | turns | tokens/episode (sampled) | KV cache (MiB) | peak, anonymous (MiB) | "
        "beyond the KV cache (MiB) | peak, VmHWM (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['session']} | {r['turns']} | {r['tokens_per_episode']:.0f} ({r['sampled_per_episode']:.0f}) | "
            f"{r['kv_mib']:.1f} | {r['anon_peak_mib']:.1f} | {r['anon_beyond_kv_mib']:.1f} | {r['peak_mib']:.1f} |"
        )


if __name__ == "__main__":
    main()
