"""Multi-turn episodes per second: KV-cache extension (engine=hf's path) vs the naive re-prefill of the whole
history every turn, same process, same episodes.

The episodes are the guess-the-number game (env=guess) with a scripted player, so both paths run exactly the
same turns (``--turns`` guesses, each a short sentence, then the env's "Higher."/"Lower."); the model still
computes the logits of every token (the sampler is the only scripted part). Runs alternate between the two
paths (``--reps`` each) and the best time of each is reported.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/episodes.py --model smollm2 --turns 6
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import rlvr
from rlvr.core.episodes import ScriptedSampler, run_episodes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    policy = rlvr.create("model", args.model)
    env = rlvr.create("env", "guess", max_turns=args.turns, max_tokens=4096)
    task = rlvr.create("task", "guess", low=1, high=100)
    rows = [dict(r, answer=100) for r in task.train_rows[: args.prompts]]  # never guessed: every turn is played
    n = args.prompts * args.generations
    turns = [[f"My guess is {10 + 7 * t + e % 5}." for t in range(args.turns)] for e in range(n)]
    tok = policy.tokenizer
    best = {"kv": float("inf"), "reprefill": float("inf")}
    outs = {}
    warm = ScriptedSampler(tok, turns[: args.generations], args.generations, tok.eos_token_id)
    run_episodes(policy, env, rows[:1], args.generations, [0], warm, 64, 4096)  # untimed: weights paged in, kernels
    for rep in range(args.reps):
        for mode in ("kv", "reprefill") if rep % 2 == 0 else ("reprefill", "kv"):
            script = ScriptedSampler(tok, turns, args.generations, tok.eos_token_id)
            t0 = time.perf_counter()
            ro = run_episodes(
                policy, env, rows, args.generations, list(range(args.prompts)), script, 64, 4096, session=mode
            )
            best[mode] = min(best[mode], time.perf_counter() - t0)
            outs[mode] = ro
    a, b = outs["kv"], outs["reprefill"]
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert all(e["turns"] == args.turns for e in a.episodes)
    sampled = a.completion_mask.bool()
    print(
        json.dumps(
            {
                "model": args.model,
                "episodes": n,
                "turns": args.turns,
                "tokens_per_episode": float(a.attention_mask.sum(1).float().mean()),
                "prompt_tokens": int(a.prompt_mask[0].sum()),
                "kv_episodes_per_s": n / best["kv"],
                "reprefill_episodes_per_s": n / best["reprefill"],
                "speedup": best["reprefill"] / best["kv"],
                "max_abs_logp_diff": float((a.sampling_logps - b.sampling_logps)[sampled].abs().max()),
            }
        )
    )


if __name__ == "__main__":
    main()
