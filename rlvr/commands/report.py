"""``rlvr report RUN_DIR``: PNG plots of a run and one self-contained HTML page.

Reads ``metrics.jsonl`` and ``completions.jsonl`` (jsonl logger) and ``config.json``; writes into
``RUN_DIR/report/`` (or ``--output DIR``):

- ``reward.png``: the total reward and each reward's mean per step, with a ±1 std band
- ``accuracy.png``: held-out accuracy (when the run evaluated: ``trainer.eval_steps``)
- ``completion_length.png``: mean and max completion length, and the fraction cut at max_new_tokens
- ``kl.png``: KL to the reference (when ``loss.beta > 0``)
- ``clip_ratio.png``: the fraction of tokens clipped low / high / in the two-sided region
- ``loss.png``: loss and gradient norm
- ``step_time.png``: seconds per step and the part spent generating
- ``audit.png`` (``audit_2.png``, ...): one panel per ``audit/...`` metric (the reward-hacking monitor), 6 per file
- multi-turn runs (``env=...``) only: ``episodes.png`` (turns and tool calls per episode), ``tools.png`` (tool error
  rate, tool-use rate, episodes cut by a limit) and ``env_time.png`` (seconds per step generating vs in the
  environment: ``env/generation_seconds``, ``env/env_seconds``, ``env/tool_seconds``)
- ``report.html``: all of the above (embedded, no external files) and sample completions (episodes turn by turn)

Step axes show whole numbers only. A sweep or several runs side by side: ``rlvr.commands.compare``.
matplotlib is needed (``pip install 'rlvr[report]'``).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from rlvr.commands.show import (
    HIT_MAX_TOKENS,
    check_run_dir,
    clean,
    episode_lines,
    plural,
    prompt_question,
    read_records,
)
from rlvr.core.errors import DataError, MissingDependencyError

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("rlvr report needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 100,
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt


def _series(metrics: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the steps where ``key`` is a finite number."""
    xs, ys = [], []
    for m in metrics:
        v = m.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(m["step"]))
            ys.append(float(v))
    return xs, ys


def _smooth(ys: Sequence[float], n: int) -> list[float]:
    """A trailing moving average over ``n`` points (for noisy per-step curves)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= n:
            acc -= ys[i - n]
        out.append(acc / min(i + 1, n))
    return out


def _window(count: int) -> int:
    """Moving-average window for a curve of ``count`` steps (0: short enough to show as is)."""
    return max(3, count // 10) if count >= 20 else 0


def _curve(ax: Any, xs: list[float], ys: list[float], color: str, label: str, **kw: Any) -> int:
    """Draw one metric: as is for short runs; thin per-step line + thick moving average for long ones."""
    w = _window(len(xs))
    if not w:
        ax.plot(xs, ys, color=color, linewidth=1.6, marker="o", markersize=3, label=label, **kw)
        return 0
    ax.plot(xs, ys, color=color, linewidth=0.8, alpha=0.35, label="_nolegend_", **kw)
    ax.plot(xs, _smooth(ys, w), color=color, linewidth=2.2, label=label, **kw)
    return w


def _legend(ax: Any, handles: Any = None, labels: Any = None) -> None:
    handles, labels = (handles, labels) if handles is not None else ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=min(4, len(handles)),
            fontsize=8,
            frameon=False,
        )


def _smoothing_note(w: int) -> str:
    return f"  (thick: {w}-step avg.)" if w else ""


def _mean_std_panel(ax: Any, metrics: list[dict[str, Any]], key: str, color: str, label: str) -> bool:
    xs, ys = _series(metrics, f"{key}/mean")
    if not xs:
        return False
    std = dict(zip(*_series(metrics, f"{key}/std")))
    sd = [std.get(x, 0.0) for x in xs]
    w = _window(len(xs))
    lo = _smooth([y - s for y, s in zip(ys, sd)], w) if w else [y - s for y, s in zip(ys, sd)]
    hi = _smooth([y + s for y, s in zip(ys, sd)], w) if w else [y + s for y, s in zip(ys, sd)]
    ax.fill_between(xs, lo, hi, color=color, alpha=0.18, linewidth=0, label="mean ± 1 std")
    _curve(ax, xs, ys, color, "mean")
    ax.set_title(label + _smoothing_note(w), fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    _legend(ax)
    return True


def integer_step_axis(ax: Any) -> None:
    """Whole-number ticks on a step axis, also when the data span less than two steps.

    MaxNLocator(integer=True) falls back to fractional ticks (2.84 … 3.16 around one point at step 3) when the
    view holds fewer than two integers, so a narrow view is first widened to one step either side of the data.
    """
    from matplotlib.ticker import MaxNLocator

    lo, hi = (float(v) for v in ax.dataLim.intervalx)
    if math.isfinite(lo) and math.isfinite(hi) and hi - lo < 2:
        ax.set_xlim(lo - 1, hi + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _save(fig: Any, path: Path, rect: Optional[tuple[float, float, float, float]] = None) -> Path:
    for ax in fig.axes:
        if ax.axison:
            integer_step_axis(ax)  # steps are whole numbers
    fig.tight_layout(rect=rect)
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _lines_plot(
    plt: Any,
    metrics: list[dict[str, Any]],
    keys: list[tuple[str, str]],
    title: str,
    ylabel: str,
    path: Path,
    percent: bool = False,
    secondary: Optional[tuple[str, str, str]] = None,
    full_scale: bool = False,
) -> Optional[Path]:
    """One panel with a line per (key, label) present; ``secondary`` = (key, label, ylabel) on a right axis."""
    present = [(k, lab) for k, lab in keys if _series(metrics, k)[0]]
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    w = 0
    for i, (k, lab) in enumerate(present):
        xs, ys = _series(metrics, k)
        w = max(w, _curve(ax, xs, [100 * y for y in ys] if percent else ys, COLORS[i % len(COLORS)], lab))
    ax.set_title(title + _smoothing_note(w))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    handles, labels = ax.get_legend_handles_labels()
    if secondary and _series(metrics, secondary[0])[0]:
        ax2 = ax.twinx()
        ax2.grid(False)
        ax2.spines["right"].set_visible(True)
        xs, ys = _series(metrics, secondary[0])
        _curve(ax2, xs, [100 * y for y in ys], "#7f7f7f", secondary[1], linestyle="--")
        ax2.set_ylabel(secondary[2])
        ax2.set_ylim(-3, 103)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if percent:  # accuracy on its full 0-100 % scale; small shares (clipping) zoomed in, from 0
        top = max((100 * y for k, _ in present for y in _series(metrics, k)[1]), default=0.0)
        span = 100.0 if full_scale else max(1.0, 1.15 * top)
        ax.set_ylim(-0.03 * span, span + (3 if full_scale else 0))
    _legend(ax, handles, labels)
    return _save(fig, path)


# multi-turn runs (env=...): (file stem, [(metric, label)], title, y label, percent); train and held-out curves
EPISODE_PLOTS: list[tuple[str, list[tuple[str, str]], str, str, bool]] = [
    (
        "episodes",
        [
            ("env/turns/mean", "turns (training)"),
            ("env/tool_calls/mean", "tool calls (training)"),
            ("eval/turns/mean", "turns (held-out)"),
            ("eval/tool_calls/mean", "tool calls (held-out)"),
        ],
        "turns and tool calls per episode",
        "per episode (mean)",
        False,
    ),
    (
        "tools",
        [
            ("env/tool_error_rate", "tool errors (training)"),
            ("env/tool_use_rate", "tool use (training)"),
            ("env/episode_truncated", "cut by a limit (training)"),
            ("eval/tool_error_rate", "tool errors (held-out)"),
            ("eval/tool_use_rate", "tool use (held-out)"),
        ],
        "tool calls and limits",
        "%",
        True,
    ),
    (
        "env_time",
        [
            ("env/generation_seconds", "generating (the model)"),
            ("env/env_seconds", "environment (tool calls included)"),
            ("env/tool_seconds", "tool calls (summed over episodes)"),
        ],
        "time per step: generating vs in the environment",
        "seconds",
        False,
    ),
]
EPISODE_SUMMARY = [k for _, keys, *_ in EPISODE_PLOTS for k, _ in keys if k.startswith("env/")]

Series = tuple[str, list[float], list[float], str]  # (legend label, steps, values, colour)
AUDIT_PREFIX = "audit/"
PANELS_PER_FIGURE = 6  # 3 x 2 panels: one figure stays readable; more panels go to the next file


def run_colors(n: int) -> list[str]:
    """``n`` distinguishable colours (tab10, then tab20 for more runs; cycles beyond 20)."""
    if n <= len(COLORS):
        return COLORS[:n]
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [matplotlib.colors.to_hex(cmap(i % cmap.N)) for i in range(n)]


def panel_grid(
    plt: Any,
    panels: list[tuple[str, list[Series]]],
    path: Path,
    ylabel: str = "",
    percent: bool = False,
    linestyles: Optional[dict[str, str]] = None,
) -> Path:
    """One figure with a panel per ``(title, series)`` (up to 3 per row); one shared legend under the panels
    when there is more than one series label (e.g. one line per run of a sweep). ``percent``: values are
    fractions, drawn as 0-100 %. ``linestyles``: label -> matplotlib line style (runs whose curves coincide
    stay visible when their styles differ)."""
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    labels: list[str] = []
    for _, series in panels:
        labels.extend(lab for lab, *_ in series if lab not in labels)
    longest = max((len(lab) for lab in labels), default=0)
    ncol = 1 if longest > 60 else math.ceil(len(labels) / math.ceil(len(labels) / (2 if longest > 35 else 3)))
    legend_in = 0.15 + 0.2 * math.ceil(len(labels) / ncol) if len(labels) > 1 else 0.0
    height = 3.3 * rows + legend_in
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols if cols > 1 else 7.5, height), squeeze=False)
    handles: dict[str, Any] = {}
    for i, (title, series) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        w = 0
        for label, xs, ys, color in series:
            style = {"linestyle": linestyles[label]} if linestyles and label in linestyles else {}
            w = max(w, _curve(ax, xs, [100 * y for y in ys] if percent else ys, color, label, **style))
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
        ax.set_title(title + _smoothing_note(w), fontsize=10)
        ax.set_xlabel("step")
        if ylabel:
            ax.set_ylabel(ylabel)
        if percent:
            ax.set_ylim(-3, 103)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].axis("off")
    if len(labels) > 1:
        fig.legend(
            [handles[lab] for lab in labels if lab in handles],
            [lab for lab in labels if lab in handles],
            loc="lower center",
            ncol=ncol,
            fontsize=8,
            frameon=False,
        )
    return _save(fig, path, rect=(0, legend_in / height, 1, 1) if legend_in else None)


def panel_figures(
    plt: Any, panels: list[tuple[str, list[Series]]], out: Path, stem: str, **kw: Any
) -> dict[str, Path]:
    """``panel_grid`` over as many files as needed: ``stem.png``, ``stem_2.png``, ... (PANELS_PER_FIGURE each)."""
    made: dict[str, Path] = {}
    for k in range(0, len(panels), PANELS_PER_FIGURE):
        name = stem if k == 0 else f"{stem}_{k // PANELS_PER_FIGURE + 1}"
        made[name] = panel_grid(plt, panels[k : k + PANELS_PER_FIGURE], out / f"{name}.png", **kw)
    return made


def audit_keys(metrics: list[dict[str, Any]]) -> list[str]:
    """Every numeric ``audit/...`` metric (the reward-hacking monitor), sorted by name."""
    return sorted(
        {
            k
            for m in metrics
            for k, v in m.items()
            if k.startswith(AUDIT_PREFIX) and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )


def reward_names(metrics: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for m in metrics:
        for k in m:
            if k.startswith("rewards/") and k.endswith("/mean"):
                name = k[len("rewards/") : -len("/mean")]
                if name not in names:
                    names.append(name)
    return names


def make_plots(metrics: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """Write every plot the metrics allow into ``out``; returns {name: png path}."""
    plt = _matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    names = reward_names(metrics)
    panels = [("reward", "total reward (weighted sum)")] + [(f"rewards/{n}", f"reward: {n}") for n in names]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.5 * rows), squeeze=False)
    for i, (key, label) in enumerate(panels):
        _mean_std_panel(axes[i // cols][i % cols], metrics, key, COLORS[i % len(COLORS)], label)
    xs, ys = _series(metrics, "dynamic/reward_all_mean")
    if xs:  # dynamic sampling: the trained groups disagree by construction; the mean of all generated says more
        ax = axes[0][0]
        _curve(ax, xs, ys, "black", "mean of everything generated (dynamic sampling)", linestyle="--")
        _legend(ax)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].axis("off")
    plots["reward"] = _save(fig, out / "reward.png")
    acc_keys = sorted(
        {
            k
            for m in metrics
            for k in m
            if k.startswith("eval/") and ("accuracy" in k or "pass@" in k) and "_ci_" not in k
        }
    )
    made = _lines_plot(
        plt,
        metrics,
        [(k, k[len("eval/") :].replace("_", " ")) for k in acc_keys],
        "held-out accuracy",
        "accuracy (%)",
        out / "accuracy.png",
        percent=True,
        full_scale=True,
    )
    if made:
        plots["accuracy"] = made
    specs = [
        (
            "completion_length",
            [("completion_length/mean", "mean"), ("completion_length/max", "max")],
            "completion length",
            "tokens",
            ("completion_length/clipped_ratio", "cut at max_new_tokens (%)", "cut at max_new_tokens (%)"),
        ),
        ("kl", [("kl", "KL(policy ‖ reference)")], "KL divergence to the reference", "KL (nats per token)", None),
        (
            "clip_ratio",
            [
                ("clip_ratio/low_mean", "low (ratio < 1 − ε)"),
                ("clip_ratio/high_mean", "high (ratio > 1 + ε_high)"),
                ("clip_ratio/region_mean", "either (clipped region)"),
            ],
            "clipped tokens",
            "tokens clipped (%)",
            None,
        ),
        ("loss", [("loss", "loss")], "loss and gradient norm", "loss", None),
        (
            "step_time",
            [("step_time", "whole step"), ("generation_time", "generation")],
            "time per step",
            "seconds",
            None,
        ),
    ]
    for name, keys, title, ylabel, secondary in specs:
        made = _lines_plot(
            plt, metrics, keys, title, ylabel, out / f"{name}.png", percent=name == "clip_ratio", secondary=secondary
        )
        if made:
            plots[name] = made
    for name, keys, title, ylabel, percent in EPISODE_PLOTS:  # multi-turn runs only: absent keys draw nothing
        made = _lines_plot(plt, metrics, keys, title, ylabel, out / f"{name}.png", percent=percent, full_scale=percent)
        if made:
            plots[name] = made
    if "loss" in plots and _series(metrics, "grad_norm")[0]:
        plots["loss"] = _loss_plot(plt, metrics, out / "loss.png")
    audit = [
        (k[len(AUDIT_PREFIX) :], [(k, *_series(metrics, k), COLORS[i % len(COLORS)])])
        for i, k in enumerate(audit_keys(metrics))
        if _series(metrics, k)[0]
    ]
    if audit:
        plots.update(panel_figures(plt, audit, out, "audit"))
    return plots


def _loss_plot(plt: Any, metrics: list[dict[str, Any]], path: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for ax, key, label, color in (
        (a1, "loss", "loss", COLORS[0]),
        (a2, "grad_norm", "gradient norm (before clipping)", COLORS[1]),
    ):
        xs, ys = _series(metrics, key)
        w = _curve(ax, xs, ys, color, label)
        ax.set_title(label + _smoothing_note(w), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("_", " "))
    return _save(fig, path)


# ----- HTML -----------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555} table{border-collapse:collapse;width:100%;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.35em .5em;vertical-align:top;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.95em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.pos{color:#1a7f37} .neg{color:#b42318}
"""


def _fnum(v: Any, digits: int = 3) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{digits}g}" if math.isfinite(v) else str(v)
    return "–" if v is None else html.escape(str(v))


def _summary_rows(metrics: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(metric, mean over the first tenth of the steps, over the last tenth, best step value for scores)."""
    rows = []
    keys = (
        ["reward/mean"]
        + [f"rewards/{r}/mean" for r in reward_names(metrics)]
        + sorted({key for m in metrics for key in m if key.startswith("eval/") and "num_prompts" not in key})
        + ["completion_length/mean", "kl", "step_time", "memory/peak_rss_mib", "memory/peak_gpu_reserved_mib"]
        + EPISODE_SUMMARY
        + audit_keys(metrics)
    )
    for key in keys:
        ys = _series(metrics, key)[1]
        if not ys:
            continue
        tenth = max(1, len(ys) // 10)
        first, last = ys[:tenth], ys[-tenth:]
        best = _fnum(max(ys)) if key.startswith(("reward/", "rewards/", "eval/")) else "–"  # higher is better
        rows.append((key, _fnum(sum(first) / len(first)), _fnum(sum(last) / len(last)), best))
    return rows


def _episodes_html(samples: list[dict[str, Any]], step: int) -> str:
    """Multi-turn samples: per episode a head line (answer, stop reason, turns, tool calls, rewards, advantage) and
    a table of its messages and tool calls, one row each (labels as ``rlvr show``'s)."""
    parts = [f"<h3>step {step}</h3>"]
    for i, s in enumerate(samples):
        ep = s["episode"]
        rewards = " · ".join(f"{html.escape(clean(k))} {_fnum(v)}" for k, v in (s.get("rewards") or {}).items())
        stop = str(ep.get("stop", "?")) + (" (truncated)" if ep.get("truncated") else "")
        head = (
            f"#{i} · answer <b>{html.escape(clean(s.get('answer', '')))}</b> · stop {html.escape(clean(stop))} · "
            f"{plural(int(ep.get('turns', 0) or 0), 'turn')} · "
            f"{plural(int(ep.get('tool_calls', 0) or 0), 'tool call')}, "
            f"{plural(int(ep.get('tool_errors', 0) or 0), 'error')} · {rewards} · "
            f"advantage {_fnum(s.get('advantage'))}"
        )
        rows = []
        for label, text in episode_lines(ep):
            body = f"<pre>{html.escape(clean(text))}</pre>"
            if label == "system":  # the tool descriptions: folded
                first = html.escape(clean(text.splitlines()[0] if text else ""))
                body = f"<details><summary>{first}</summary>{body}</details>"
            cls = "neg" if label in ("tool error", "bad call") else ""
            rows.append(f"<tr><td class='{cls}'>{html.escape(label)}</td><td>{body}</td></tr>")
        parts.append(f"<p>{head}</p><table>{''.join(rows)}</table>")
    return "".join(parts)


def _samples_html(records: list[dict[str, Any]], step: int) -> str:
    samples = [r for r in records if int(r.get("step", 0)) == step]
    if not samples:
        return ""
    if any(isinstance(r.get("episode"), dict) for r in samples):
        return _episodes_html([r for r in samples if isinstance(r.get("episode"), dict)], step)
    names: list[str] = []
    for s in samples:
        names.extend(k for k in (s.get("rewards") or {}) if k not in names)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["prompt", "completion", "answer", *names, "advantage"])
    body = []
    for s in samples:
        rewards = s.get("rewards") or {}
        adv = s.get("advantage")
        number = isinstance(adv, (int, float))
        cls = "pos" if number and adv > 0 else "neg" if number and adv < 0 else ""
        completion = clean(s.get("completion", "")) + (f" {HIT_MAX_TOKENS}" if s.get("truncated") else "")
        cells = [
            f"<td><pre>{html.escape(clean(prompt_question(str(s.get('prompt', '')))))}</pre></td>",
            f"<td><pre>{html.escape(completion)}</pre></td>",
            f"<td><pre>{html.escape(clean(s.get('answer', '')))}</pre></td>",
        ]
        cells += [f'<td class="num">{_fnum(rewards.get(n))}</td>' for n in names]
        cells.append(f'<td class="num {cls}">{_fnum(adv)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<h3>step {step}</h3><table><tr>{head}</tr>{''.join(body)}</table>"


def _config_line(config: dict[str, Any]) -> str:
    def name(kind: str) -> str:
        node = config.get(kind)
        if isinstance(node, dict):
            return str(node.get("name", "") or ", ".join(node))
        return "?"

    tr = config.get("trainer", {}) if isinstance(config.get("trainer"), dict) else {}
    parts = [
        f"model <b>{html.escape(name('model'))}</b>",
        f"task <b>{html.escape(name('task'))}</b>",
        f"rewards <b>{html.escape(', '.join(config.get('reward') or {}))}</b>",
        f"loss <b>{html.escape(name('loss'))}</b>",
    ]
    for key, label in (("prompts_per_step", "B"), ("num_generations", "G"), ("lr", "lr"), ("max_steps", "max steps")):
        if key in tr:
            parts.append(f"{label} = {html.escape(str(tr[key]))}")
    return " · ".join(parts)


def write_html(
    run_dir: Path,
    out: Path,
    metrics: list[dict[str, Any]],
    plots: dict[str, Path],
    records: list[dict[str, Any]],
    config: dict[str, Any],
) -> Path:
    captions = {
        "reward": "Reward per step: the mean over the step's completions, with a ±1 standard deviation band.",
        "accuracy": "Held-out accuracy, measured every trainer.eval_steps steps.",
        "completion_length": ("Completion length in tokens; dashed: share of completions cut at max_new_tokens."),
        "kl": "KL divergence of the policy to the reference model (loss.beta > 0).",
        "clip_ratio": "Share of completion tokens whose probability ratio was clipped.",
        "loss": "Loss and gradient norm.",
        "step_time": "Seconds per training step, and the part spent generating completions.",
        "episodes": "Turns and tool calls per episode (env=...): the mean over the step's episodes.",
        "tools": (
            "Tool error rate (failed calls / calls), tool-use rate (episodes with at least one call that ran) and "
            "the share of episodes a limit cut (env.max_turns, env.max_tokens, engine.max_new_tokens)."
        ),
        "env_time": (
            "Seconds per step generating vs in the environment (env.step: tool calls, feedback, tokenising "
            "its replies); tool calls: their time summed over the step's episodes."
        ),
    }
    audit_caption = (
        "Reward-hacking monitor: every audit/… metric the run logged, one panel each (signals such as "
        "disagreement between the reward and an independent check, duplicates, format-only gains)."
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>rlvr report: {html.escape(run_dir.name)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>rlvr run report</h1><p class='meta'>{html.escape(str(run_dir.resolve()))}<br>"
        f"{len(metrics)} steps logged" + (f" (last: step {int(metrics[-1]['step'])})" if metrics else "") + "</p>",
    ]
    if config:
        parts.append(f"<p>{_config_line(config)}</p>")
    skipped = [m for m in metrics if m.get("skipped_steps")]
    if skipped and skipped[-1].get("skipped_steps"):
        parts.append(f"<p class='neg'>{int(skipped[-1]['skipped_steps'])} step(s) skipped for a non-finite loss.</p>")
    rows = _summary_rows(metrics)
    if rows:
        parts.append(
            "<h2>Summary</h2><table><tr><th>metric</th><th>first 10% of steps (mean)</th>"
            "<th>last 10% of steps (mean)</th><th>best step</th></tr>"
            + "".join(
                f"<tr><td>{html.escape(k)}</td><td class='num'>{a}</td><td class='num'>{b}</td>"
                f"<td class='num'>{c}</td></tr>"
                for k, a, b, c in rows
            )
            + "</table>"
        )
    parts.append("<h2>Plots</h2>")
    for name, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        caption = captions.get(name, audit_caption if name.startswith("audit") else name)
        parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}"
            "</figcaption></figure>"
        )
    steps = sorted({int(r.get("step", 0)) for r in records})
    if steps:
        parts.append(
            "<h2>Sample completions</h2><p class='meta'>From completions.jsonl: the first and the last "
            "logged step (trainer.log_completions per step).</p>"
        )
        for st in [steps[0], steps[-1]] if len(steps) > 1 else steps:
            parts.append(_samples_html(records, st))
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The step records of ``run_dir/metrics.jsonl``, one per step (the last line of a step wins), by step."""
    by_step: dict[int, dict[str, Any]] = {}
    for m in read_records(run_dir / "metrics.jsonl"):
        if isinstance(m.get("step"), (int, float)) and not isinstance(m.get("step"), bool):
            by_step[int(m["step"])] = m
    return [by_step[s] for s in sorted(by_step)]


def load_config(run_dir: Path) -> dict[str, Any]:
    """``run_dir/config.json`` (the composed config the trainer wrote), or {} when absent or unreadable."""
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def build_report(run_dir: str | Path, output: Optional[str | Path] = None) -> Path:
    """Write the plots and ``report.html`` for a run directory; returns the HTML path."""
    path = check_run_dir(run_dir)
    metrics = load_metrics(path)
    if not metrics:
        raise DataError(f"{path}/metrics.jsonl has no steps yet: nothing to plot")
    out = Path(output).expanduser() if output else path / "report"
    plots = make_plots(metrics, out)
    return write_html(path, out, metrics, plots, read_records(path / "completions.jsonl"), load_config(path))
