"""``rlvr audit RUN_DIR``: would the run's rewards pay for answers that should fail, or miss right ones?

Reads the logged completions (``completions.jsonl``: prompt, completion, the task row) and the run's
config (``config.json``: its rewards, the answer column), then scores with every reward:

- the logged completions themselves, judged right or wrong by independent checks (verifier plugins;
  default ``math_answer`` plus the run's ``trainer.audit_verifiers``);
- counterfactual probes built from each logged completion and its reference answer:

  ============================  =======================================================  ============
  probe                         what it is                                               a good reward
  ============================  =======================================================  ============
  ``right_in_place``            the completion with its final answer replaced by the     pays it
                                reference (positive control)
  ``truncated``                 that completion cut just before its final answer         does not pay
  ``format_wrong_answer``       the completion's format with a wrong final answer        does not pay
  ``wrong_place``               the right answer inside the reasoning, a wrong final     does not pay
                                answer
  ``answer_only``               the reference answer alone, reasoning removed            depends: a pure
                                                                                         correctness reward
                                                                                         pays it, a reward
                                                                                         meant to require
                                                                                         reasoning does not
  ============================  =======================================================  ============

A reward *pays* a text when its score is above its pass level: by default the midpoint between the
lowest and highest score it gave over the whole audit set (``--threshold name=value`` to set it); a
reward that gives every text the same score is flagged as unable to tell right from wrong.
For each reward the audit prints the false-positive rate (share of the should-fail probes it pays)
and the false-negative rate (share of right answers, logged completions that the checks pass and
positive controls, that it does not pay), each with a 95 % Wilson interval, and flags the reward
when an interval's lower bound is above ``--max-fp`` / ``--max-fn`` (5 % by default). It writes
``audit.html`` and ``audit.json`` into the run directory (or ``--output DIR``).
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from rlvr.core.errors import ConfigError, DataError, PathNotFoundError, UsageError

PROBES = ("right_in_place", "truncated", "format_wrong_answer", "wrong_place", "answer_only")
SHOULD_FAIL = ("truncated", "format_wrong_answer", "wrong_place")
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: (centre ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    with p = successes / n; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


# ----------------------------------------------------------------------------- probes


def _answers() -> Any:
    from rlvr.core import answers  # the answer-parsing module shared by the rewards and evaluation

    return answers


def answer_span(text: str) -> Optional[tuple[int, int]]:
    """Where the completion's final answer (as the rewards' shared extractor finds it) sits in ``text``:
    (start, end) of its last occurrence, or None when the completion commits to no answer."""
    found = _answers().extract_final_answer(text)
    if not found:
        return None
    start = text.rfind(found)
    return (start, start + len(found)) if start >= 0 else None


def wrong_answer(reference: str) -> str:
    """An answer that is certainly not ``reference``: a number one larger (kept an integer when it is one),
    else a fixed word that no reference equals."""
    value = _answers().parse_number(reference)
    if value is not None:
        bigger = value + 1
        return str(bigger.numerator) if bigger.denominator == 1 else str(float(bigger))
    return "none of the above" if reference.strip().lower() != "none of the above" else "all of the above"


def insert_before(text: str, stop: int, insert: str) -> str:
    """``text`` with `` insert`` put at the whitespace of ``text[:stop]`` nearest its middle (inside the
    reasoning, before the final answer); at the very start when there is no whitespace."""
    spaces = [m.start() for m in re.finditer(r"\s", text[:stop])]
    if not spaces:
        return f"{insert}\n{text}"
    at = min(spaces, key=lambda i: abs(i - stop / 2))
    return text[:at] + f" {insert}" + text[at:]


def make_probes(completion: str, reference: str) -> dict[str, str]:
    """The counterfactual probes of one completion (see the module docstring). A completion without a final
    answer gets one appended ("The answer is …") first, so that every probe exists."""
    span = answer_span(completion)
    base = completion
    if span is None:
        base = completion.rstrip() + ("\n" if completion.strip() else "") + f"The answer is {reference}."
        start = base.rfind(reference)
        span = (start, start + len(reference))
    start, end = span
    right = base[:start] + reference + base[end:]
    wrong = base[:start] + wrong_answer(reference) + base[end:]
    return {
        "right_in_place": right,
        "truncated": right[:start],
        "format_wrong_answer": wrong,
        "wrong_place": insert_before(wrong, start, reference),
        "answer_only": reference,
    }


# ----------------------------------------------------------------------------- inputs


@dataclass
class Sample:
    """One logged completion and the task row it answered."""

    prompt: str
    completion: str
    row: dict[str, Any]
    reference: Optional[str]
    step: int = 0
    logged: dict[str, Optional[float]] = field(default_factory=dict)


def load_run(path: str | Path) -> tuple[list[Sample], dict[str, Any], Path]:
    """Logged samples and config of a run directory (``completions.jsonl``, ``config.json``) or of a
    completions jsonl (with a ``config.json`` beside it when there is one). Returns (samples, config, dir)."""
    p = Path(path)
    if p.is_dir():
        file, where = p / "completions.jsonl", p
        if not file.is_file():
            raise PathNotFoundError(
                f"rlvr audit: {p} has no completions.jsonl; train with logger=[jsonl] "
                "(the default) or give the path of a completions jsonl"
            )
    elif p.is_file():
        file, where = p, p.parent
    else:
        raise PathNotFoundError(f"rlvr audit: {p} is neither a run directory nor a completions jsonl")
    config: dict[str, Any] = {}
    if (where / "config.json").is_file():
        config = json.loads((where / "config.json").read_text())
    column = str(((config.get("task") or {}).get("answer_column")) or "answer")
    samples = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if not isinstance(rec, dict) or "completion" not in rec:
            raise DataError(
                f"rlvr audit: {file}:{n} has no 'completion' field; expected the lines of completions.jsonl"
            )
        row = dict(rec.get("row") or {})
        if column not in row and rec.get("answer") not in (None, ""):
            row[column] = rec["answer"]  # older runs logged only the answer
        reference = _answers().reference_answer(row.get(column))
        samples.append(
            Sample(
                str(rec.get("prompt", "")),
                str(rec["completion"]),
                row,
                reference,
                int(rec.get("step", 0)),
                dict(rec.get("rewards") or {}),
            )
        )
    if not samples:
        raise DataError(f"rlvr audit: {file} holds no completions")
    return samples, config, where


def build_rewards(names: Optional[Sequence[str]], config: Mapping[str, Any]) -> list[Any]:
    """The rewards to audit as RewardFn: ``names`` (with the run's parameters when the run used them), or every
    reward of the run's config. A reward that raises scores None (the audit goes on)."""
    from rlvr.core.config import plugin_params
    from rlvr.core.registry import create
    from rlvr.core.rewards import RewardFn

    configured = dict(config.get("reward") or {})
    chosen = list(names) if names else list(configured)
    if not chosen:
        raise ConfigError(
            "rlvr audit: no reward to audit: the run has no config.json with rewards; name them with --rewards a,b"
        )
    out = []
    for name in chosen:
        params = plugin_params(configured.get(name) or {})
        params.pop("on_error", None)
        out.append(RewardFn(name, create("reward", name, **params), 1.0, "none"))
    return out


# ----------------------------------------------------------------------------- the audit


@dataclass
class RewardAudit:
    """One reward's verdict."""

    name: str
    threshold: float
    fp: int = 0
    fp_n: int = 0
    fn: int = 0
    fn_n: int = 0
    probes: dict[str, tuple[int, int]] = field(default_factory=dict)  # probe -> (paid, scored)
    logged_wrong_paid: tuple[int, int] = (0, 0)  # logged completions the checks fail: (paid, n)
    rescored_changed: int = 0
    examples: list[tuple[str, str, float]] = field(default_factory=list)  # (probe, text, score) paid, should fail
    flags: list[str] = field(default_factory=list)

    @property
    def fp_rate(self) -> Optional[float]:
        return self.fp / self.fp_n if self.fp_n else None

    @property
    def fn_rate(self) -> Optional[float]:
        return self.fn / self.fn_n if self.fn_n else None


@dataclass
class AuditResult:
    samples: int
    checks: list[str]
    rewards: list[RewardAudit]
    right_logged: int
    wrong_logged: int
    checks_disagree: int
    html_path: Optional[Path] = None
    json_path: Optional[Path] = None

    @property
    def flagged(self) -> list[str]:
        return [r.name for r in self.rewards if r.flags]


def _truth(verdicts: Sequence[Optional[bool]]) -> Optional[bool]:
    """All checks that apply agree: their verdict; none applies or they disagree: None."""
    known = [v for v in verdicts if v is not None]
    if not known or len(set(known)) > 1:
        return None
    return known[0]


def run_audit(
    samples: Sequence[Sample],
    rewards: Sequence[Any],
    checks: Mapping[str, Any],
    thresholds: Optional[Mapping[str, float]] = None,
    max_fp: float = 0.05,
    max_fn: float = 0.05,
) -> AuditResult:
    """Score the logged completions and their probes with every reward and every check (see the module
    docstring for the definitions); pure apart from calling the rewards and checks."""
    from rlvr.core.monitor import run_check
    from rlvr.core.rewards import score

    texts: list[str] = []
    kinds: list[str] = []  # "logged" or a probe name
    owner: list[int] = []  # sample index
    for i, s in enumerate(samples):
        texts.append(s.completion)
        kinds.append("logged")
        owner.append(i)
        if s.reference is None:
            continue
        for probe, text in make_probes(s.completion, s.reference).items():
            texts.append(text)
            kinds.append(probe)
            owner.append(i)
    prompts = [samples[i].prompt for i in owner]
    keys: list[str] = []
    for s in samples:
        keys.extend(k for k in s.row if k not in keys)
    columns = {k: [samples[i].row.get(k) for i in owner] for k in keys}
    verdicts = {name: run_check(check, texts, prompts, columns) for name, check in checks.items()}
    truth = [_truth([v[t] for v in verdicts.values()]) for t in range(len(texts))]
    table = score(list(rewards), texts, prompts, columns)

    logged_idx = [t for t, k in enumerate(kinds) if k == "logged"]
    result = AuditResult(
        len(samples),
        list(checks),
        [],
        sum(truth[t] is True for t in logged_idx),
        sum(truth[t] is False for t in logged_idx),
        sum(len({v[t] for v in verdicts.values()} - {None}) > 1 for t in logged_idx),
    )
    for j, reward in enumerate(rewards):
        col = table[:, j].tolist()
        scored = [v for v in col if not math.isnan(v)]
        constant = bool(scored) and max(scored) == min(scored)
        if thresholds and reward.name in thresholds:
            level = float(thresholds[reward.name])
        elif scored and not constant:
            level = (max(scored) + min(scored)) / 2
        else:
            level = scored[0] if scored else 0.0  # one score for everything: nothing counts as paid
        ra = RewardAudit(reward.name, level)
        if constant:
            ra.flags.append(f"gives every text the same score ({scored[0]:g}): it cannot tell right from wrong here")
        elif not scored:
            ra.flags.append("scored nothing (None for every text)")
        paid = [None if math.isnan(v) else v > level for v in col]
        for probe in PROBES:
            idx = [t for t, k in enumerate(kinds) if k == probe and paid[t] is not None]
            ra.probes[probe] = (sum(bool(paid[t]) for t in idx), len(idx))
        bad = [t for t, k in enumerate(kinds) if k in SHOULD_FAIL and paid[t] is not None]
        ra.fp, ra.fp_n = sum(bool(paid[t]) for t in bad), len(bad)
        good = [
            t
            for t, k in enumerate(kinds)
            if k in ("logged", "right_in_place") and truth[t] is True and paid[t] is not None
        ]
        ra.fn, ra.fn_n = sum(not paid[t] for t in good), len(good)
        wrong = [t for t in logged_idx if truth[t] is False and paid[t] is not None]
        ra.logged_wrong_paid = (sum(bool(paid[t]) for t in wrong), len(wrong))
        for t in logged_idx:
            before = samples[owner[t]].logged.get(reward.name)
            if before is not None and not math.isnan(col[t]) and abs(float(before) - col[t]) > 1e-6:
                ra.rescored_changed += 1
        ra.examples = [(kinds[t], texts[t], col[t]) for t in bad if paid[t]][:3]
        if ra.fp_n and wilson(ra.fp, ra.fp_n)[0] > max_fp:
            ra.flags.append(f"pays for probes that should fail (false positives {ra.fp}/{ra.fp_n})")
        if ra.fn_n and wilson(ra.fn, ra.fn_n)[0] > max_fn:
            ra.flags.append(f"misses right answers (false negatives {ra.fn}/{ra.fn_n})")
        result.rewards.append(ra)
    return result


# ----------------------------------------------------------------------------- output


def _rate(k: int, n: int) -> str:
    if not n:
        return "n/a (n=0)"
    lo, hi = wilson(k, n)
    return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}] n={n}"


def format_text(result: AuditResult, source: str) -> str:
    """The console summary: one block per reward."""
    lines = [
        f"rlvr audit: {result.samples} logged completions from {source}; checks: "
        f"{', '.join(result.checks) or '(none)'} — right {result.right_logged}, wrong {result.wrong_logged}, "
        f"checks disagree {result.checks_disagree}",
        "FP = share of should-fail probes (truncated, format_wrong_answer, wrong_place) the reward pays; "
        "FN = share of right answers it does not pay; [95 % Wilson interval]",
    ]
    for ra in result.rewards:
        verdict = "FLAGGED: " + "; ".join(ra.flags) if ra.flags else "ok"
        probes = "  ".join(f"{p} {k}/{n}" for p, (k, n) in ra.probes.items())
        lines += [
            f"\n{ra.name}  (pays above {ra.threshold:g})  {verdict}",
            f"  false positives  {_rate(ra.fp, ra.fp_n)}",
            f"  false negatives  {_rate(ra.fn, ra.fn_n)}",
            f"  paid per probe   {probes}",
            f"  logged completions the checks fail, paid: {ra.logged_wrong_paid[0]}/{ra.logged_wrong_paid[1]}"
            + (f"; re-scored differently from the log: {ra.rescored_changed}" if ra.rescored_changed else ""),
        ]
    return "\n".join(lines)


def _esc(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return html.escape(re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "·", text))


def format_html(result: AuditResult, source: str) -> str:
    """A self-contained HTML page: the table, what each probe is, and paid should-fail examples."""
    rows = []
    for ra in result.rewards:
        probe_cells = "".join(f"<td>{k}/{n}</td>" for k, n in ra.probes.values())
        flag = "<b style='color:#b00'>" + _esc("; ".join(ra.flags)) + "</b>" if ra.flags else "ok"
        rows.append(
            f"<tr><td><b>{_esc(ra.name)}</b></td><td>{ra.threshold:g}</td><td>{_rate(ra.fp, ra.fp_n)}</td>"
            f"<td>{_rate(ra.fn, ra.fn_n)}</td>{probe_cells}<td>{flag}</td></tr>"
        )
    examples = []
    for ra in result.rewards:
        for probe, text, value in ra.examples:
            examples.append(
                f"<tr><td>{_esc(ra.name)}</td><td>{probe}</td><td>{value:g}</td><td><pre>{_esc(text)}</pre></td></tr>"
            )
    head = "".join(f"<th>{p}</th>" for p in PROBES)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>rlvr audit</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}pre{{white-space:pre-wrap;margin:0}}
</style></head><body>
<h1>rlvr audit</h1><p>{result.samples} logged completions from <code>{_esc(source)}</code>; independent checks:
{_esc(", ".join(result.checks) or "(none)")}: right {result.right_logged}, wrong {result.wrong_logged},
checks disagree {result.checks_disagree}.</p>
<p><b>FP</b>: share of the probes that should fail (truncated before the answer, the format with a wrong answer,
the right answer in the wrong place) that the reward pays. <b>FN</b>: share of right answers (logged completions the
checks pass, and each completion with the reference put in its answer's place) it does not pay. A reward pays a text
when its score is above the level shown. Intervals: 95 % Wilson. Per probe: paid / scored.</p>
<table><tr><th>reward</th><th>pays above</th><th>FP</th><th>FN</th>{head}<th>verdict</th></tr>{"".join(rows)}</table>
<h2>Should-fail probes that were paid</h2>
<table><tr><th>reward</th><th>probe</th><th>score</th><th>text</th></tr>{"".join(examples) or "<tr><td>none</td></tr>"}
</table></body></html>
"""


def _as_json(result: AuditResult) -> dict[str, Any]:
    def rate(k: int, n: int) -> dict[str, Any]:
        lo, hi = wilson(k, n)
        return {"k": k, "n": n, "rate": (k / n) if n else None, "ci95": [lo, hi]}

    return {
        "samples": result.samples,
        "checks": result.checks,
        "right_logged": result.right_logged,
        "wrong_logged": result.wrong_logged,
        "checks_disagree": result.checks_disagree,
        "rewards": {
            ra.name: {
                "threshold": ra.threshold,
                "false_positive": rate(ra.fp, ra.fp_n),
                "false_negative": rate(ra.fn, ra.fn_n),
                "flags": ra.flags,
                "probes": {p: {"paid": k, "n": n} for p, (k, n) in ra.probes.items()},
                "logged_wrong_paid": list(ra.logged_wrong_paid),
                "rescored_changed": ra.rescored_changed,
            }
            for ra in result.rewards
        },
    }


def parse_thresholds(text: str) -> dict[str, float]:
    """``"a=0.5,b=2"`` -> {"a": 0.5, "b": 2.0}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, eq, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"rlvr audit: --threshold {part!r}: expected name=number, e.g. arithmetic=0") from None
        if not eq:
            raise UsageError(f"rlvr audit: --threshold {part!r}: expected name=number, e.g. arithmetic=0")
    return out


def audit(
    path: str | Path,
    rewards: Optional[Sequence[str]] = None,
    verifiers: Optional[Sequence[str]] = None,
    output: Optional[str | Path] = None,
    thresholds: Optional[Mapping[str, float]] = None,
    max_fp: float = 0.05,
    max_fn: float = 0.05,
    last: int = 0,
) -> tuple[AuditResult, str]:
    """Audit a run directory (or a completions jsonl): returns the result and the console text, and writes
    ``audit.html`` and ``audit.json`` into ``output`` (default: the run directory). ``last``: only the
    completions of the last N logged steps (0 = all)."""
    from rlvr.core.monitor import resolve_checks

    samples, config, where = load_run(path)
    if last > 0:
        steps = sorted({s.step for s in samples})[-last:]
        samples = [s for s in samples if s.step in steps]
    column = str(((config.get("task") or {}).get("answer_column")) or "answer")
    names = list(verifiers) if verifiers else None
    if names is None:
        configured = (config.get("trainer") or {}).get("audit_verifiers")
        names = ["math_answer"] + [n for n in (configured or []) if n != "math_answer"] if configured else None
    checks = resolve_checks(names, column)
    if not checks:
        raise ConfigError("rlvr audit: no independent check: name verifiers with --verifiers math_answer,...")
    result = run_audit(samples, build_rewards(rewards, config), checks, thresholds, max_fp, max_fn)
    out = Path(output) if output else where
    out.mkdir(parents=True, exist_ok=True)
    result.html_path, result.json_path = out / "audit.html", out / "audit.json"
    result.html_path.write_text(format_html(result, str(path)))
    result.json_path.write_text(json.dumps(_as_json(result), indent=2))
    return result, format_text(result, str(path))


__all__ = ["audit", "run_audit", "make_probes", "wilson", "load_run", "Sample", "AuditResult"]
