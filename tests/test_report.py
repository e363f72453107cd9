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
    proc = run_cli("train", *args, "trainer.max_steps=4", "trainer.log_steps=2", "trainer.eval_steps=2",
                   "trainer.eval_samples=2", "loss.beta=0.04", "reward=[arithmetic,proximity]",
                   "logger=[jsonl,tensorboard]", "trainer.log_completions=3", f"hydra.run.dir={d}")
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
    for field in ("reward=", "arithmetic=", "proximity=", "len=", "s/step="):  # reward mean, each reward, length, step time
        assert field in last, (field, last)
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", bar)  # elapsed<ETA
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
    samples = [json.loads(x) for x in (run_dir / "completions.jsonl").read_text().splitlines() if '"step": 4' in x]
    assert f"{samples[0]['advantage']:+.2f}" in out
    code, out, _ = cli("show", str(run_dir), "--last", "2")
    assert code == 0 and out.count("step 3 · reward") == 1 and out.count("step 4 · reward") == 1
    code, out, _ = cli("show", str(run_dir), "--step", "1")
    assert code == 0 and out.startswith("step 1 ·")


def test_show_errors(cli, tmp_path, run_dir):
    for args, want_code, expected in [((str(tmp_path / "nope"),), 1, "does not exist"),
                                      ((str(tmp_path),), 1, "is it an rlvr run directory"),
                                      ((str(run_dir), "--step", "99"), 1, "step 99 has no logged completions"),
                                      ((str(run_dir), "--lats", "2"), 2, "Did you mean --last?")]:
        code, _, err = cli("show", *args)
        assert code == want_code and expected in err, (args, err)


def test_report_writes_plots_and_a_self_contained_html_page(cli, run_dir, tmp_path):
    out_dir = tmp_path / "report"
    code, out, err = cli("report", str(run_dir), "--output", str(out_dir))
    assert code == 0, err
    expected = {"reward", "accuracy", "completion_length", "kl", "clip_ratio", "loss", "step_time"}
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
    from rlvr.report import build_report

    page = build_report(run_dir, tmp_path / "r")
    import struct

    for png in page.parent.glob("*.png"):
        width, height = struct.unpack(">II", png.read_bytes()[16:24])
        assert 600 <= width <= 2000 and 300 <= height <= 1200, (png.name, width, height)


def test_report_of_a_run_without_kl_or_eval_leaves_those_plots_out(tmp_path):
    from rlvr.report import build_report

    rows = [{"step": s, "reward/mean": s / 10, "reward/std": 0.1, "rewards/r/mean": s / 10, "rewards/r/std": 0.1,
             "completion_length/mean": 10.0 + s, "step_time": 1.0, "loss": 0.1, "grad_norm": 1.0} for s in range(1, 31)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 31, "rew')
    page = build_report(tmp_path)
    names = {p.stem for p in page.parent.glob("*.png")}
    assert {"reward", "completion_length", "loss", "step_time"} <= names
    assert not {"kl", "accuracy", "clip_ratio"} & names


def test_report_errors(cli, tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    code, _, err = cli("report", str(tmp_path))
    assert code == 1 and "no steps yet" in err
    code, _, err = cli("report")
    assert code == 2 and "required: RUN_DIR" in err and "usage: rlvr report" in err


def test_tensorboard_logs_the_same_metrics(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert logs
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    rows = metrics(run_dir)
    for key in ("reward/mean", "rewards/arithmetic/mean", "rewards/proximity/mean", "kl", "completion_length/mean",
                "clip_ratio/low_mean", "step_time", "eval/greedy_accuracy"):
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
