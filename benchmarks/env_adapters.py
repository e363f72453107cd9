"""Environment-side cost of the framework adapters: ``reset`` + ``step`` calls per second, no model.

Plays ``--episodes`` episodes of ``--turns`` wrong guesses (then the right one) through each environment's rlvr
interface, timing only the environment calls, and reports microseconds per call:

* ``guess``: rlvr's built-in guess-the-number env (the baseline: plain Python);
* ``openenv``: the wordle_env OpenEnv package through ``env=openenv`` (pydantic action parsing and validation,
  the environment's observation model, rendering);
* ``verifiers``: the vf-hotcold verifiers package through ``env=verifiers`` (each turn resumes the env's
  ``run()`` coroutine on the adapter's event loop; scoring ``task.score(trace)`` runs at the end).

    PYTHONPATH=tests/fixtures:tests/fixtures/vf_hotcold python benchmarks/env_adapters.py --episodes 200
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any, Callable

import rlvr


def play(env: Any, rows: list[dict[str, Any]], guesses: Callable[[dict[str, Any]], list[str]]) -> tuple[float, int]:
    """(seconds spent in reset + step, number of calls)."""
    spent, calls = 0.0, 0
    for row in rows:
        t = time.perf_counter()
        _, state = env.reset(row)
        spent += time.perf_counter() - t
        calls += 1
        for text in guesses(row):
            t = time.perf_counter()
            _, done, _ = env.step(state, text)
            spent += time.perf_counter() - t
            calls += 1
            if done:
                break
    return spent, calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--turns", type=int, default=4, help="wrong guesses before the right one")
    args = ap.parse_args()
    n, k = args.episodes, args.turns
    out = {}

    guess_task = rlvr.create("task", "guess", train_size=n)
    env = rlvr.create("env", "guess", max_turns=k + 1)
    secs, calls = play(env, guess_task.train_rows, lambda r: [str(r["answer"] % 20 + 1)] * k + [str(r["answer"])])
    out["guess"] = {"calls": calls, "us_per_call": 1e6 * secs / calls}

    from wordle_env.server.wordle_env_environment import WORDS

    env = rlvr.create("env", "openenv", id="wordle_env", observation_key="prompt", max_turns=k + 1)
    rows = [{"seed": i} for i in range(n)]
    secs, calls = play(env, rows, lambda r: ["xylyl"] * k + [random.Random(r["seed"]).choice(WORDS)])
    out["openenv"] = {"calls": calls, "us_per_call": 1e6 * secs / calls}

    task = rlvr.create("task", "verifiers", id="vf-hotcold", eval_size=1, args={"num_tasks": n + 1})
    env = rlvr.create("env", "verifiers", max_turns=k + 1)
    secs, calls = play(env, task.train_rows, lambda r: ["0"] * k + [str(r["vf_task"]["target"])])
    out["verifiers"] = {"calls": calls, "us_per_call": 1e6 * secs / calls}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
