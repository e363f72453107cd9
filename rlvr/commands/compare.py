"""``rlvr report SWEEP_DIR`` / ``rlvr report RUN RUN ...``: several runs side by side in one HTML page.

A sweep directory is what ``rlvr train -m`` writes (``multirun/<date>/<time>/`` with one run directory per job,
``0``, ``1``, ...). Each run is labelled by the overrides that differ between the runs, read from Hydra's
``.hydra/overrides.yaml`` in the run directory (or, for runs without one, from the ``config.json`` values that
differ). The page holds one table (a row per run: its overrides, final and best reward, held-out accuracy,
training steps/s, peak memory) and the curves of every run overlaid by step: reward, held-out accuracy,
completion length, each ``audit/`` metric (the reward-hacking monitor) and, for multi-turn runs (``env=...``),
turns and tool calls per episode, generation vs environment seconds and the tool error / use rates. Plots need
matplotlib.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from rlvr.commands.report import (
    CSS,
    _matplotlib,
    _series,
    audit_keys,
    build_report,
    load_config,
    load_metrics,
    panel_figures,
    run_colors,
)
from rlvr.core.errors import DataError, PathNotFoundError

REWARD = "reward/mean"
ACCURACY = "eval/greedy_accuracy"
NOT_RUNS = {"checkpoints", "final", "report", "tensorboard", ".hydra"}
LINESTYLES = ["-", "--", ":", "-."]  # per run, with its colour: runs whose curves coincide stay visible


@dataclass
class RunSummary:
    """One run's row in the comparison table (None: the run did not log it)."""

    path: Path
    name: str  # the directory name (the job number in a sweep)
    overrides: list[str]  # every override the run was started with
    label: str = ""  # the overrides that set it apart from the other runs
    metrics: list[dict[str, Any]] = field(default_factory=list)
    last_step: int = 0
    max_steps: Optional[int] = None
    finished: bool = False  # final/ was written
    final_reward: Optional[float] = None  # mean of reward/mean over the last 10 % of the steps (at least one)
    best_reward: Optional[float] = None  # the highest per-step reward/mean
    accuracy_key: Optional[str] = None
    final_accuracy: Optional[float] = None  # the last held-out evaluation
    best_accuracy: Optional[float] = None
    steps_per_s: Optional[float] = None  # steps / sum(step_time): training only, evaluation excluded
    peak_rss_mib: Optional[float] = None
    peak_gpu_mib: Optional[float] = None  # torch's reserved GPU memory (memory/peak_gpu_reserved_mib)


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / ".hydra" / "overrides.yaml").is_file()


def _job_order(path: Path) -> tuple[int, int, str]:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def find_runs(paths: Sequence[str | Path]) -> tuple[list[Path], Optional[Path]]:
    """The run directories named by ``paths`` and the sweep directory when exactly one was given.

    Each path is a run directory (it holds metrics.jsonl or .hydra/overrides.yaml) or a sweep directory whose
    sub-directories (or their sub-directories: ``multirun/<date>`` holds one sweep per time) are runs. Jobs
    are in job-number order.
    """
    runs: list[Path] = []
    sweep: Optional[Path] = None
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_dir():
            raise PathNotFoundError(
                f"{str(path)!r} does not exist: give a run directory (outputs/<date>/<time>) or a "
                "sweep directory (multirun/<date>/<time>)"
            )
        if is_run_dir(path):
            runs.append(path)
            continue
        children = [c for c in sorted(path.iterdir(), key=_job_order) if c.is_dir() and c.name not in NOT_RUNS]
        found = [c for c in children if is_run_dir(c)]
        if not found:  # one level deeper: a date directory holding several sweeps
            found = [
                g
                for c in children
                for g in sorted(c.iterdir(), key=_job_order)
                if g.is_dir() and g.name not in NOT_RUNS and is_run_dir(g)
            ]
        if not found:
            raise PathNotFoundError(
                f"{str(path)!r} is neither a run directory (with metrics.jsonl) nor a sweep "
                "directory (sub-directories 0, 1, ... as `rlvr train -m` writes under "
                "multirun/<date>/<time>)"
            )
        runs.extend(found)
        sweep = path if len(paths) == 1 else None
    unique: list[Path] = []
    for r in runs:
        if r.resolve() not in {u.resolve() for u in unique}:
            unique.append(r)
    return unique, sweep


def read_overrides(run_dir: Path) -> Optional[list[str]]:
    """The command-line overrides Hydra recorded for the run (``.hydra/overrides.yaml``), without ``hydra.*``."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    if not isinstance(data, list):
        return None
    return [str(o) for o in data if not str(o).lstrip("+~").startswith("hydra")]


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: str(node)}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def varying_overrides(overrides: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """(overrides every run shares, each run's overrides that are not shared).

    A key is shared when every run sets it to the same value; a key only some runs set is not shared.
    """
    if not overrides:
        return [], []
    values: dict[str, set[str]] = {}
    for ovs in overrides:
        for o in ovs:
            values.setdefault(_key(o), set()).add(o)
    shared_keys = {
        k for k, vs in values.items() if len(vs) == 1 and all(any(_key(o) == k for o in ovs) for ovs in overrides)
    }
    common = [o for o in overrides[0] if _key(o) in shared_keys]
    return common, [[o for o in ovs if _key(o) not in shared_keys] for ovs in overrides]


def config_differences(configs: list[dict[str, Any]]) -> list[list[str]]:
    """Per run, ``key=value`` for each config.json leaf whose value is not the same in every run."""
    flat = [_flatten(c) for c in configs]
    keys: list[str] = []
    for f in flat:
        keys.extend(k for k in f if k not in keys)
    differing = [k for k in keys if len({f.get(k) for f in flat}) > 1]
    return [[f"{k}={f[k]}" for k in differing if k in f] for f in flat]


def _max(metrics: list[dict[str, Any]], key: str) -> Optional[float]:
    ys = _series(metrics, key)[1]
    return max(ys) if ys else None


def summarize(run_dir: Path, name: str, overrides: list[str]) -> RunSummary:
    """The table row of one run (see ``RunSummary`` for what each number is)."""
    metrics = load_metrics(run_dir)
    config = load_config(run_dir)
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    s = RunSummary(
        path=run_dir,
        name=name,
        overrides=overrides,
        metrics=metrics,
        last_step=int(metrics[-1]["step"]) if metrics else 0,
        max_steps=int(trainer["max_steps"]) if isinstance(trainer.get("max_steps"), int) else None,
        finished=(run_dir / "final").is_dir(),
    )
    rewards = _series(metrics, REWARD)[1]
    if rewards:
        tail = rewards[-max(1, len(rewards) // 10) :]
        s.final_reward, s.best_reward = sum(tail) / len(tail), max(rewards)
    s.accuracy_key = accuracy_key(metrics)
    if s.accuracy_key:
        acc = _series(metrics, s.accuracy_key)[1]
        s.final_accuracy, s.best_accuracy = acc[-1], max(acc)
    times = _series(metrics, "step_time")[1]
    if times and sum(times) > 0:
        s.steps_per_s = len(times) / sum(times)
    s.peak_rss_mib = _max(metrics, "memory/peak_rss_mib")
    s.peak_gpu_mib = _max(metrics, "memory/peak_gpu_reserved_mib")
    return s


def accuracy_keys(metrics: list[dict[str, Any]]) -> list[str]:
    return sorted({k for m in metrics for k in m if k.startswith("eval/") and ("accuracy" in k or "pass@" in k)})


def accuracy_key(metrics: list[dict[str, Any]]) -> Optional[str]:
    """The held-out accuracy the table shows: greedy accuracy when logged, else the first accuracy metric."""
    keys = [k for k in accuracy_keys(metrics) if _series(metrics, k)[0]]
    return ACCURACY if ACCURACY in keys else (keys[0] if keys else None)


def load_runs(paths: Sequence[str | Path]) -> tuple[list[RunSummary], list[str], Optional[Path]]:
    """(one summary per run with its label, the overrides all runs share, the sweep directory or None)."""
    runs, sweep = find_runs(paths)
    names = [os.path.relpath(r, sweep) if sweep else str(r) for r in runs]
    recorded = [read_overrides(r) for r in runs]
    if all(o is not None for o in recorded):
        common, own = varying_overrides([o or [] for o in recorded])
    else:  # a run without Hydra's record: label by the config values that differ
        common, own = [], config_differences([load_config(r) for r in runs])
    summaries = [summarize(r, n, o or []) for r, n, o in zip(runs, names, recorded)]
    for s, mine in zip(summaries, own):
        s.label = " ".join(mine)
    seen: dict[str, int] = {}
    for s in summaries:
        seen[s.label] = seen.get(s.label, 0) + 1
    for s in summaries:  # no own overrides, or the same ones twice (the same sweep twice): add the directory
        if seen[s.label] > 1 or not s.label:
            s.label = f"{s.label} [{s.name}]".strip()
    return summaries, common, sweep


# ----- the table --------------------------------------------------------------------------------------------------
def _mem(mib: Optional[float]) -> str:
    if mib is None:
        return "–"
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def _num(v: Optional[float]) -> str:
    """A reward for the table: 3 decimals (rewards are usually O(1)); 3 significant digits when large."""
    if v is None or not math.isfinite(v):
        return "–" if v is None else str(v)
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.3g}"


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _steps(s: RunSummary) -> str:
    if not s.metrics:
        return "none logged"  # a job that failed before its first step (its directory has the log)
    done = f"{s.last_step}/{s.max_steps}" if s.max_steps else str(s.last_step)
    return done if s.finished else f"{done} (unfinished)"


def table_rows(runs: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the comparison table as text cells; a column of numbers nobody logged is left out."""
    gpu = any(r.peak_gpu_mib is not None for r in runs)
    header = [
        "run",
        "overrides",
        "steps",
        "final reward",
        "best reward",
        "held-out accuracy (final / best)",
        "steps/s",
        "peak RSS",
    ] + (["peak GPU"] if gpu else [])
    rows = []
    for r in runs:
        acc = "–" if r.final_accuracy is None else f"{_pct(r.final_accuracy)} / {_pct(r.best_accuracy)}"
        row = [
            r.name,
            r.label or "–",
            _steps(r),
            _num(r.final_reward),
            _num(r.best_reward),
            acc,
            "–" if r.steps_per_s is None else f"{r.steps_per_s:.3g}",
            _mem(r.peak_rss_mib),
        ]
        rows.append(row + ([_mem(r.peak_gpu_mib)] if gpu else []))
    return header, rows


def text_table(runs: list[RunSummary]) -> str:
    """The comparison table as plain text for the terminal (columns padded, no box drawing)."""
    header, rows = table_rows(runs)
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _best(values: list[Optional[float]], highest: bool = True) -> set[int]:
    """Indices holding the best value (all of them on a tie); none when every run has the same value."""
    ok = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(ok) < 2 or len({v for v, _ in ok}) < 2:
        return set()  # nothing to single out
    top = max(v for v, _ in ok) if highest else min(v for v, _ in ok)
    return {i for v, i in ok if v == top}


def html_table(runs: list[RunSummary], colors: list[str]) -> str:
    """The table as HTML; the best value of each numeric column in bold; a colour chip matches the plots."""
    header, rows = table_rows(runs)
    best = {
        3: _best([r.final_reward for r in runs]),
        4: _best([r.best_reward for r in runs]),
        5: _best([r.final_accuracy for r in runs]),
        6: _best([r.steps_per_s for r in runs]),
        7: _best([r.peak_rss_mib for r in runs], highest=False),
    }
    if len(header) > 8:
        best[8] = _best([r.peak_gpu_mib for r in runs], highest=False)
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for i, (row, color) in enumerate(zip(rows, colors)):
        cells = []
        for j, cell in enumerate(row):
            text = html.escape(cell)
            if i in best.get(j, set()):
                text = f"<b>{text}</b>"
            if j == 0:
                text = f"<span class='chip' style='background:{color}'></span>{text}"
            cells.append(f"<td class='num'>{text}</td>" if j >= 2 else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


# ----- plots and page ---------------------------------------------------------------------------------------------
def make_sweep_plots(runs: list[RunSummary], out: Path, colors: list[str]) -> dict[str, Path]:
    """Overlaid per-step curves, one line per run: reward, held-out accuracy, completion length, audit/ metrics."""
    plt = _matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    styles = {r.label or r.name: LINESTYLES[i % len(LINESTYLES)] for i, r in enumerate(runs)}

    def overlay(key: str) -> list[tuple[str, list[float], list[float], str]]:
        return [
            (r.label or r.name, *_series(r.metrics, key), c)
            for r, c in zip(runs, colors)
            if _series(r.metrics, key)[0]
        ]

    groups: list[tuple[str, list[tuple[str, str]], dict[str, Any]]] = [
        ("reward", [("reward/mean", "reward (mean per step)")], {"ylabel": "reward"}),
        (
            "accuracy",
            [
                (k, k[len("eval/") :].replace("_", " "))
                for k in sorted({k for r in runs for k in accuracy_keys(r.metrics)})
            ],
            {"ylabel": "held-out accuracy (%)", "percent": True},
        ),
        ("completion_length", [("completion_length/mean", "completion length (mean, tokens)")], {}),
        ("audit", [(k, k[len("audit/") :]) for k in sorted({k for r in runs for k in audit_keys(r.metrics)})], {}),
        (  # multi-turn runs (env=...) only
            "episodes",
            [
                ("env/turns/mean", "turns per episode"),
                ("env/tool_calls/mean", "tool calls per episode"),
                ("env/generation_seconds", "seconds generating per step"),
                ("env/env_seconds", "seconds in the environment per step"),
            ],
            {},
        ),
        (
            "tools",
            [("env/tool_error_rate", "tool error rate (%)"), ("env/tool_use_rate", "tool-use rate (%)")],
            {"percent": True},
        ),
    ]
    for stem, keys, kw in groups:
        panels = [(title, overlay(k)) for k, title in keys]
        panels = [(t, s) for t, s in panels if s]
        if panels:
            plots.update(panel_figures(plt, panels, out, stem, linestyles=styles, **kw))
    return plots


CAPTIONS = {
    "reward": "Reward per step (the mean over the step's completions), one line per run; long runs are smoothed.",
    "accuracy": "Held-out accuracy, measured every trainer.eval_steps steps, one line per run.",
    "completion_length": "Mean completion length in tokens, one line per run.",
    "audit": "Reward-hacking monitor: each audit/… metric, one line per run.",
    "episodes": (
        "Multi-turn runs: turns and tool calls per episode, seconds generating vs in the environment per step."
    ),
    "tools": "Multi-turn runs: tool error rate (failed calls / calls) and tool-use rate, one line per run.",
}
SWEEP_CSS = CSS + ".chip{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em}"


def sweep_command(sweep: Optional[Path]) -> Optional[str]:
    """The sweep's command line from Hydra's ``multirun.yaml`` (``hydra.overrides.task``), when there is one."""
    if sweep is None or not (sweep / "multirun.yaml").is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load((sweep / "multirun.yaml").read_text(encoding="utf-8"))
        task = data["hydra"]["overrides"]["task"]
    except (yaml.YAMLError, KeyError, TypeError):
        return None
    return "rlvr train -m " + " ".join(str(o) for o in task) if isinstance(task, list) else None


def write_sweep_html(
    runs: list[RunSummary],
    common: list[str],
    sweep: Optional[Path],
    out: Path,
    plots: dict[str, Path],
    colors: list[str],
) -> Path:
    title = f"rlvr sweep report: {sweep.name}" if sweep else f"rlvr comparison of {len(runs)} runs"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{SWEEP_CSS}</style></head><body>",
        f"<h1>{'rlvr sweep report' if sweep else 'rlvr run comparison'}</h1><p class='meta'>"
        + (html.escape(str(sweep.resolve())) + "<br>" if sweep else "")
        + f"{len(runs)} runs</p>",
    ]
    command = sweep_command(sweep)
    if command:
        parts.append(f"<p>Command: <code>{html.escape(command)}</code></p>")
    if common:
        parts.append(f"<p>Every run: <code>{html.escape(' '.join(common))}</code></p>")
    parts.append("<h2>Runs</h2>" + html_table(runs, colors))
    parts.append(
        "<p class='meta'>final reward: the mean of reward/mean over the last 10 % of the logged steps "
        "(at least one); best reward: the highest single step. Held-out accuracy: the last and the best "
        "evaluation (trainer.eval_steps). steps/s: logged steps / their summed step_time (training only, "
        "evaluation excluded). Peak RSS / GPU: the largest memory/peak_* value the run logged. Bold: the "
        "best value of a column.</p>"
    )
    parts.append("<h2>Plots</h2>")
    for name, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = CAPTIONS.get(name.rsplit("_", 1)[0] if name[-1].isdigit() else name, name)
        parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append(
        "<h2>Run directories</h2><ul>"
        + "".join(
            f"<li>{html.escape(r.name)}: <code>{html.escape(str(r.path.resolve()))}</code> — "
            f"<code>{html.escape(' '.join(r.overrides) or '(no overrides)')}</code></li>"
            for r in runs
        )
        + "</ul>"
    )
    parts.append("</body></html>")
    page = out / "report.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def build_comparison(
    paths: Sequence[str | Path], output: Optional[str | Path] = None
) -> tuple[Path, list[RunSummary]]:
    """Write the comparison plots and ``report.html``; returns (page, runs).

    Default output: ``SWEEP_DIR/report/`` for a sweep, ``<common parent of the runs>/compare-report/`` for runs.
    """
    runs, common, sweep = load_runs(paths)
    if not any(r.metrics for r in runs):
        raise DataError(f"none of the {len(runs)} runs has logged a step yet (metrics.jsonl): nothing to compare")
    if output:
        out = Path(output).expanduser()
    elif sweep is not None:
        out = sweep / "report"
    else:
        out = Path(os.path.commonpath([str(r.resolve()) for r in runs])) / "compare-report"
    colors = run_colors(len(runs))
    plots = make_sweep_plots(runs, out, colors)
    return write_sweep_html(runs, common, sweep, out, plots, colors), runs


def report(paths: Sequence[str | Path], output: Optional[str | Path] = None) -> str:
    """``rlvr report``: one run directory → that run's report; a sweep directory or several runs → the
    comparison. Writes the files and returns what to print."""
    if len(paths) == 1 and is_run_dir(Path(paths[0]).expanduser()):
        page = build_report(paths[0], output)
        pngs = sorted(p.name for p in page.parent.glob("*.png"))
        return f"rlvr report: wrote {page} and {len(pngs)} plots in {page.parent}: {', '.join(pngs)}"
    page, runs = build_comparison(paths, output)
    return f"{text_table(runs)}\n\nrlvr report: wrote {page} (compares {len(runs)} runs)"
