"""Agreement of ``math_answer`` with the verdicts of tests/answer_cases.py (a careful grader's), per kind.

    python benchmarks/answer_agreement.py                 # this checkout
    PYTHONPATH=/path/to/other/checkout python benchmarks/answer_agreement.py   # e.g. an older rlvr

Builds the verifier straight from the plugin module (no entry points needed), so any rlvr version
that has ``rlvr/plugins/rewards/math_answer.py`` can be measured. Prints one line per kind, the
total, and the disagreeing cases with ``--show``.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

CASES_FILE = Path(__file__).resolve().parents[1] / "tests" / "answer_cases.py"


def load_cases() -> list[tuple[str, str, str, bool]]:
    """The table of this checkout (loaded by path, so that PYTHONPATH can point rlvr at another one)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("answer_cases", CASES_FILE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.CASES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="print every disagreeing case")
    args = parser.parse_args()
    import rlvr.plugins.rewards.math_answer as mod

    CASES = load_cases()

    verify = mod.make_math_answer(mod.MathAnswerConfig())
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    wrong = []
    start = time.perf_counter()
    for kind, reference, completion, expected in CASES:
        try:
            got = verify([completion], answer=[reference])[0]
        except Exception as exc:  # noqa: BLE001 - an older version may raise: that is a disagreement
            got = f"raised {type(exc).__name__}"
        by_kind[kind][1] += 1
        if got is expected:
            by_kind[kind][0] += 1
        else:
            wrong.append((kind, reference, completion, expected, got))
    seconds = time.perf_counter() - start
    print(f"rlvr from {Path(mod.__file__).resolve().parents[3]}")
    for kind, (ok, n) in by_kind.items():
        print(f"  {kind:<12} {ok:>3}/{n:<3}")
    total_ok, total = sum(v[0] for v in by_kind.values()), sum(v[1] for v in by_kind.values())
    print(f"agreement: {total_ok}/{total} = {100 * total_ok / total:.1f} % ({seconds:.1f} s)")
    if args.show:
        for kind, reference, completion, expected, got in wrong:
            print(f"[{kind}] ref={reference[:60]!r} completion={completion[:100]!r} expected={expected} got={got}")


if __name__ == "__main__":
    main()
