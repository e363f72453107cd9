"""What a person sees: the progress bar, `rlvr show`, `rlvr report` (PNG plots + HTML) and TensorBoard logging."""

import json
import re

import pytest

from tests.conftest import TINY, run_cli
from tests.test_bad_input import cli  # noqa: F401 - the in-process CLI fixture

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One short run with everything a report can show: two rewards, KL, held-out accuracy, TensorBoard."""
    d = tmp_path_factory.mktemp("report") / "run"
    args = [a for a in TINY if a != "trainer.progress=false"]
    proc = run_cli(
        "train",
        *args,
        "trainer.max_steps=4",
        "trainer.log_steps=2",
        "trainer.eval_steps=2",
        "trainer.eval_samples=2",
        "loss.beta=0.04",
        "reward=[arithmetic,proximity]",
        "logger=[jsonl,tensorboard]",
        "trainer.log_completions=3",
        f"hydra.run.dir={d}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (d / "train_stdout.txt").write_text(proc.stdout)
    (d / "train_stderr.txt").write_text(proc.stderr)
    return d


def metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_progress_bar_and_summary_lines(run_dir):
    err = (run_dir / "train_stderr.txt").read_text()
    out = (run_dir / "train_stdout.txt").read_text()
    bar = err.replace("\r", "\n")
    assert re.search(r"rlvr train: +\d+%.*\| *[1-4]/4 \[", bar)  # step n/total
    last = [line for line in bar.splitlines() if "4/4" in line][-1]
    # reward mean, each reward, length, step time
    for field in ("reward=", "arithmetic=", "proximity=", "len=", "s/step="):
        assert field in last, (field, last)
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", bar)  # elapsed<ETA
    assert "step/s" not in bar and not re.search(r"\ds/step", bar), last  # one rate (s/step=), not also tqdm's
    summaries = [line for line in (out + err).splitlines() if re.match(r"step \d+/4 +reward", line)]
    assert [s.split()[1] for s in summaries] == ["2/4", "4/4"]  # every trainer.log_steps = 2
    assert "len" in summaries[0] and "s/step" in summaries[0]


def test_completions_jsonl_has_rewards_and_advantages(run_dir):
    rows = [json.loads(x) for x in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    for r in rows:
        assert set(r["rewards"]) == {"arithmetic", "proximity"}
        assert {"prompt", "completion", "answer", "advantage", "truncated"} <= set(r)


def test_show_prints_the_latest_completions_as_a_table(cli, run_dir):
    code, out, err = cli("show", str(run_dir), "--width", "100")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("step 4 · reward")
    header = next(line for line in lines if line.startswith("| #"))
    for col in ("prompt", "completion", "answer", "arithmetic", "proximity", "adv"):
        assert col in header
    assert all(len(line) <= 100 for line in lines)
    assert "What is" in out and "<|im_start|>" not in out  # the question, without the chat markup
    assert not re.search(r"^  (assistant|tool call|tool error) +\|", out, re.M)  # single-turn: no episode view
    samples = [json.loads(x) for x in (run_dir / "completions.jsonl").read_text().splitlines() if '"step": 4' in x]
    assert f"{samples[0]['advantage']:+.2f}" in out
    code, out, _ = cli("show", str(run_dir), "--last", "2")
    assert code == 0 and out.count("step 3 · reward") == 1 and out.count("step 4 · reward") == 1
    code, out, _ = cli("show", str(run_dir), "--step", "1")
    assert code == 0 and out.startswith("step 1 ·")


def test_show_errors(cli, tmp_path, run_dir):
    for args, want_code, expected in [
        ((str(tmp_path / "nope"),), 1, "does not exist"),
        ((str(tmp_path),), 1, "is it an rlvr run directory"),
        ((str(run_dir), "--step", "99"), 1, "step 99 has no logged completions"),
        ((str(run_dir), "--lats", "2"), 2, "Did you mean --last?"),
    ]:
        code, _, err = cli("show", *args)
        assert code == want_code and expected in err, (args, err)


def test_report_writes_plots_and_a_self_contained_html_page(cli, run_dir, tmp_path):
    out_dir = tmp_path / "report"
    code, out, err = cli("report", str(run_dir), "--output", str(out_dir))
    assert code == 0, err
    expected = {"reward", "accuracy", "completion_length", "kl", "clip_ratio", "loss", "step_time", "audit"}
    pngs = {p.stem: p for p in out_dir.glob("*.png")}
    assert set(pngs) == expected, sorted(pngs)
    for p in pngs.values():
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    page = (out_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(expected)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing outside the file
    sample = json.loads((run_dir / "completions.jsonl").read_text().splitlines()[-1])
    import html

    assert html.escape(sample["answer"]) in page and "Sample completions" in page
    assert "arithmetic" in page and "proximity" in page and "eval/greedy_accuracy" in page


def test_report_image_size_is_readable(run_dir, tmp_path):
    """The plots are large enough to read (and small enough to embed)."""
    from rlvr.commands.report import build_report

    page = build_report(run_dir, tmp_path / "r")
    import struct

    for png in page.parent.glob("*.png"):
        width, height = struct.unpack(">II", png.read_bytes()[16:24])
        assert 600 <= width <= 2000 and 300 <= height <= 1200, (png.name, width, height)


def test_report_of_a_run_without_kl_or_eval_leaves_those_plots_out(tmp_path):
    from rlvr.commands.report import build_report

    rows = [
        {
            "step": s,
            "reward/mean": s / 10,
            "reward/std": 0.1,
            "rewards/r/mean": s / 10,
            "rewards/r/std": 0.1,
            "completion_length/mean": 10.0 + s,
            "step_time": 1.0,
            "loss": 0.1,
            "grad_norm": 1.0,
        }
        for s in range(1, 31)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 31, "rew')
    page = build_report(tmp_path)
    names = {p.stem for p in page.parent.glob("*.png")}
    assert {"reward", "completion_length", "loss", "step_time"} <= names
    assert not {"kl", "accuracy", "clip_ratio", "audit"} & names


def test_report_errors(cli, tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    code, _, err = cli("report", str(tmp_path))
    assert code == 1 and "no steps yet" in err
    code, _, err = cli("report")
    assert code == 2 and "give a run directory" in err and "sweep directory" in err
    code, _, err = cli("report", str(tmp_path / "nope"))
    assert code == 1 and "does not exist" in err
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    code, _, err = cli("report", str(tmp_path / "sweep"))
    assert code == 1 and "neither a run directory" in err and "multirun/<date>/<time>" in err


def test_tensorboard_logs_the_same_metrics(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert logs
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    rows = metrics(run_dir)
    for key in (
        "reward/mean",
        "rewards/arithmetic/mean",
        "rewards/proximity/mean",
        "kl",
        "completion_length/mean",
        "clip_ratio/low_mean",
        "step_time",
        "eval/greedy_accuracy",
    ):
        assert key in tags, key
        events = acc.Scalars(key)
        want = [(r["step"], r[key]) for r in rows if key in r]
        assert [e.step for e in events] == [s for s, _ in want]
        assert [e.value for e in events] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7)
    assert "completions/text_summary" in acc.Tags()["tensors"]  # add_text is stored as a tensor summary


def test_tensorboard_resume_drops_the_redone_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlvr.plugins.loggers.tensorboard import TensorBoardLogger, TensorBoardLoggerConfig

    first = TensorBoardLogger(TensorBoardLoggerConfig())
    first.on_train_start(tmp_path, {}, 0)
    for step in (1, 2, 3):
        first.on_step_end(step, {"reward/mean": float(step)}, [])
    first.writer.flush()  # crashed after step 3; the checkpoint is at step 2
    again = TensorBoardLogger(TensorBoardLoggerConfig())
    again.on_train_start(tmp_path, {}, 2)
    again.on_step_end(3, {"reward/mean": 30.0}, [])
    again.on_train_end({})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 1.0), (2, 2.0), (3, 30.0)]


# ----- integer step axes, audit/ plots, peak memory ------------------------------------------------------------------
def test_a_single_point_gets_whole_number_step_ticks(tmp_path):
    """One evaluation at step 3 used to give an x-axis of 2.84 … 3.16 with fractional ticks."""
    from rlvr.commands.report import _matplotlib, _save

    plt = _matplotlib()
    for steps in ([3.0], [2.0, 3.0], [1.0, 50.0]):
        fig, ax = plt.subplots()
        ax.plot(steps, [0.5] * len(steps), marker="o")
        _save(fig, tmp_path / "ticks.png")
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), (steps, ticks)
        assert lo < min(steps) and hi > max(steps) and hi - lo >= 2


def _write_metrics(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


AUDIT = [
    "audit/reward_verifier_disagreement",
    "audit/duplicate_completions",
    "audit/format_only_gain",
    "audit/arithmetic/pass_without_answer",
    "audit/length_reward_corr",
    "audit/forged_result_rate",
    "audit/always_equal_objects",
]


def test_every_audit_metric_gets_a_panel(tmp_path):
    """Generic: whatever audit/… metrics a run logs are plotted (7 here: 6 panels per image, then a second)."""
    from rlvr.commands.report import build_report

    rows = [{"step": s, "reward/mean": 0.1 * s, "step_time": 1.0, "eval/greedy_accuracy": 0.25} for s in (1, 2, 3)]
    for r in rows:
        r.update({k: (i + r["step"]) / 20 for i, k in enumerate(AUDIT)})
    rows[1]["audit/flag"] = True  # not a number to plot
    _write_metrics(tmp_path / "run", rows)
    page = build_report(tmp_path / "run")
    names = {p.stem for p in page.parent.glob("*.png")}
    assert {"audit", "audit_2", "accuracy"} <= names
    text = page.read_text()
    assert text.count("Reward-hacking monitor") == 2
    assert "<td>audit/duplicate_completions</td>" in text  # also in the summary table
    from rlvr.commands.report import audit_keys

    assert audit_keys(rows) == sorted(AUDIT)


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/status").exists(), reason="reads Linux /proc")
def test_peak_memory_is_measured_in_a_fresh_process():
    """memory/peak_rss_mib is the kernel's high-water mark (VmHWM), in MiB, and counts a fresh 300 MiB block."""
    import subprocess
    import sys

    code = (
        "import re; from rlvr.core.resources import peak_memory\n"
        "def kib(f): return int(re.search(f + r':\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
        "rss = kib('VmRSS'); block = bytearray(b'x') * (300 << 20); m = peak_memory()\n"
        "print(rss / 1024, kib('VmRSS') / 1024, kib('VmHWM') / 1024, m['memory/peak_rss_mib'], sorted(m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    rss_before, rss_after, hwm, peak = (float(x) for x in out[:4])
    assert rss_after - rss_before > 280, out  # the block is resident
    assert abs(peak - hwm) < 2 and peak >= rss_after - 1, out  # MiB, the process's peak
    assert "memory/peak_gpu_allocated_mib" not in " ".join(out)  # CUDA unused: no GPU numbers


# ----- sweeps: rlvr report SWEEP_DIR / rlvr report RUN RUN ----------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A real 4-run sweep of the tiny model: 2 learning rates x 2 losses, 4 steps, evaluated at steps 2 and 4."""
    d = tmp_path_factory.mktemp("sweep") / "multirun"
    args = [a for a in TINY if a != "trainer.eval_steps=0"]
    proc = run_cli(
        "train",
        "-m",
        *args,
        "trainer.max_steps=4",
        "trainer.eval_steps=2",
        "trainer.eval_samples=2",
        "trainer.lr=1e-3,1e-2",
        "loss=grpo,dr_grpo",
        f"hydra.sweep.dir={d}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in d.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    return d


LABELS = [
    "trainer.lr=0.001 loss=grpo",
    "trainer.lr=0.001 loss=dr_grpo",
    "trainer.lr=0.01 loss=grpo",
    "trainer.lr=0.01 loss=dr_grpo",
]


def test_sweep_report_has_one_row_per_run_labelled_by_its_overrides(cli, sweep_dir):
    code, out, err = cli("report", str(sweep_dir))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "overrides", "steps"]
    rows = [line for line in lines if re.match(r"\d +trainer\.lr=", line)]
    assert [r.split("  ")[0].strip() for r in rows] == ["0", "1", "2", "3"]
    for row, label, job in zip(rows, LABELS, range(4)):
        assert label in row, (label, row)
        ms = metrics(sweep_dir / str(job))
        assert [m["step"] for m in ms] == [1, 2, 3, 4]
        assert f"{ms[-1]['reward/mean']:.3f}" in row  # final reward: the last 10 % of 4 steps = the last step
        assert f"{max(m['reward/mean'] for m in ms):.3f}" in row  # best reward
        acc = [m["eval/greedy_accuracy"] for m in ms if "eval/greedy_accuracy" in m]
        assert len(acc) == 2 and f"{100 * acc[-1]:.1f} % / {100 * max(acc):.1f} %" in row
        steps_per_s = len(ms) / sum(m["step_time"] for m in ms)
        assert f"{steps_per_s:.3g}" in row
        assert all(m["memory/peak_rss_mib"] > 50 for m in ms)  # the trainer logs its peak memory
        assert f"{max(m['memory/peak_rss_mib'] for m in ms):.0f} MiB" in row
        assert "4/4" in row
    page = sweep_dir / "report" / "report.html"
    assert str(page) in out and page.is_file()


def test_sweep_report_page_is_self_contained_with_overlaid_plots(cli, sweep_dir, tmp_path):
    code, _, err = cli("report", str(sweep_dir), "--output", str(tmp_path / "r"))
    assert code == 0, err
    pngs = {p.stem for p in (tmp_path / "r").glob("*.png")}
    assert {"reward", "accuracy", "completion_length"} <= pngs
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert page.count("<tr>") == 1 + 4  # header + one row per run
    for label in LABELS:
        assert label in page
    assert "Every run: <code>model=tiny" in page  # the overrides the runs share, said once
    assert "trainer.lr=1e-3,1e-2 loss=grpo,dr_grpo" in page  # the sweep's command line (multirun.yaml)
    assert "peak GPU" not in page  # no run used CUDA


def test_compare_named_runs_labels_only_what_differs(cli, sweep_dir, tmp_path):
    code, out, err = cli("report", str(sweep_dir / "0"), str(sweep_dir / "2"), "--output", str(tmp_path / "c"))
    assert code == 0, err
    rows = [line for line in out.splitlines() if str(sweep_dir) in line]
    assert len(rows) == 2
    assert "trainer.lr=0.001" in rows[0] and "trainer.lr=0.01" in rows[1]
    assert "loss=" not in out.split("rlvr report:")[0]  # both runs used loss=grpo: not a label
    assert (tmp_path / "c" / "report.html").is_file() and "compares 2 runs" in out


def test_runs_without_hydra_records_are_labelled_by_their_config(sweep_dir, tmp_path):
    import shutil

    from rlvr.commands.compare import load_runs, text_table

    for job in ("1", "2"):
        shutil.copytree(
            sweep_dir / job, tmp_path / "s" / job, ignore=shutil.ignore_patterns(".hydra", "final", "checkpoints")
        )
    runs, common, sweep = load_runs([tmp_path / "s"])
    assert sweep == tmp_path / "s" and common == []
    assert "trainer.lr=0.001" in runs[0].label and "loss.name=dr_grpo" in runs[0].label
    assert "trainer.lr=0.01" in runs[1].label and "loss.name=grpo" in runs[1].label
    assert not runs[0].finished and "(unfinished)" in text_table(runs)


def test_varying_overrides():
    from rlvr.commands.compare import varying_overrides

    common, own = varying_overrides(
        [
            ["model=tiny", "trainer.lr=1e-3", "loss=grpo"],
            ["model=tiny", "trainer.lr=1e-2", "loss=grpo"],
            ["model=tiny", "trainer.lr=1e-3", "loss=grpo", "trainer.seed=2"],
        ]
    )
    assert common == ["model=tiny", "loss=grpo"]
    assert own == [["trainer.lr=1e-3"], ["trainer.lr=1e-2"], ["trainer.lr=1e-3", "trainer.seed=2"]]
    assert varying_overrides([["a=1"], ["a=1"]]) == (["a=1"], [[], []])


def test_sweep_of_synthetic_runs_plots_audit_metrics_and_gpu_memory(tmp_path):
    """Runs that logged audit/… metrics and GPU memory (as on a GPU): both appear; identical labels get the dir."""
    from rlvr.commands.compare import build_comparison, table_rows, text_table

    for job, shift in (("0", 0.0), ("1", 0.5)):
        rows = [
            {
                "step": s,
                "reward/mean": shift + s / 10,
                "step_time": 0.5,
                "memory/peak_rss_mib": 900.0 + s,
                "memory/peak_gpu_reserved_mib": 2048.0 * (1 + shift),
                **{k: shift + s / 100 for k in AUDIT},
            }
            for s in range(1, 26)
        ]
        _write_metrics(tmp_path / "sweep" / job, rows)
        (tmp_path / "sweep" / job / ".hydra").mkdir()
        (tmp_path / "sweep" / job / ".hydra" / "overrides.yaml").write_text("- model=tiny\n- reward=[arithmetic]\n")
    (tmp_path / "sweep" / "2" / ".hydra").mkdir(parents=True)  # a job that failed before its first step
    (tmp_path / "sweep" / "2" / ".hydra" / "overrides.yaml").write_text("- model=tiny\n- reward=[oops]\n")
    page, runs = build_comparison([tmp_path / "sweep"])
    # 0 and 1 differ only by their directory
    assert [r.label for r in runs] == ["reward=[arithmetic] [0]", "reward=[arithmetic] [1]", "reward=[oops]"]
    assert "none logged" in text_table(runs).splitlines()[-1]
    runs = runs[:2]
    names = {p.stem for p in page.parent.glob("*.png")}
    assert {"reward", "audit", "audit_2"} <= names and "accuracy" not in names
    table = text_table(runs)
    assert "peak GPU" in table and "2.00 GiB" in table and "3.00 GiB" in table and "925 MiB" in table
    header, (row0, row1) = table_rows(runs)
    cell = {name: i for i, name in enumerate(header)}
    assert (row0[cell["final reward"]], row0[cell["best reward"]]) == ("2.450", "2.500")  # mean of the last 10 %
    assert (row1[cell["final reward"]], row1[cell["best reward"]]) == ("2.950", "3.000")
    assert row0[cell["steps/s"]] == row1[cell["steps/s"]] == "2"  # 25 steps / (25 x 0.5 s)
    assert row0[cell["steps"]] == "25 (unfinished)"  # no final/ directory
    text = page.read_text()
    assert "<b>2.950</b>" in text and "<b>3.000</b>" in text and "<b>925 MiB</b>" not in text  # best in bold
    assert "<b>2.00 GiB</b>" in text  # the lower peak GPU memory


def test_reward_plot_adds_the_mean_of_everything_generated_with_dynamic_sampling(tmp_path, monkeypatch):
    from rlvr.commands import report

    labels: list[str] = []
    draw = report._curve

    def spy(ax, xs, ys, color, label, **kw):
        labels.append(label)
        return draw(ax, xs, ys, color, label, **kw)

    monkeypatch.setattr(report, "_curve", spy)
    metrics = [{"step": s, "reward/mean": 1.0, "reward/std": 0.5, "dynamic/reward_all_mean": 2.0} for s in (1, 2, 3)]
    report.make_plots(metrics, tmp_path / "dynamic")
    assert "mean of everything generated (dynamic sampling)" in labels
    labels.clear()
    report.make_plots(
        [{k: v for k, v in m.items() if not k.startswith("dynamic/")} for m in metrics], tmp_path / "off"
    )
    assert labels and not any("everything" in label for label in labels)
