"""The third-party plugin example: pip-installed, discovered through its entry point, used by `rlvr train`.

The example is installed with pip into a temporary directory that is put on the PYTHONPATH of
the CLI subprocesses (``pip install --target``), so the shared virtual environment is left as it
was; entry points are found there exactly as in site-packages.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, run_cli

EXAMPLE = REPO / "examples" / "rlvr-plugin-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / EXAMPLE.name  # pip builds in the source tree: keep the repo clean
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip could not install {EXAMPLE}:\n{proc.stderr[-2000:]}")
    assert any(target.glob("rlvr_plugin_example-*.dist-info")), sorted(p.name for p in target.iterdir())
    return {"PYTHONPATH": str(target)}


def test_plugins_lists_it_with_its_distribution(installed):
    proc = run_cli("plugins", env=installed)
    assert proc.returncode == 0, proc.stderr
    line = next((ln for ln in proc.stdout.splitlines() if ln.strip().startswith("brevity ")), None)
    assert line is not None, proc.stdout
    assert "rlvr-plugin-example" in line and "rlvr_plugin_example" in line


def test_train_with_the_plugin_reward(installed, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        *TINY,
        "reward=[brevity]",
        "reward.brevity.max_words=3",
        "trainer.max_steps=1",
        f"hydra.run.dir={run_dir}",
        env=installed,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 1 and "rewards/brevity/mean" in metrics[0]


def test_without_the_package_the_name_is_unknown(tmp_path):
    proc = run_cli("train", *TINY, "reward=[brevity]", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode != 0
    assert "brevity" in proc.stderr and not (tmp_path / "r" / "metrics.jsonl").exists()


def test_no_packaging_path_module_function(tmp_path):
    """A plain function in a module of the working directory, named in config (reward=function)."""
    (tmp_path / "my_rewards.py").write_text(
        "def shortness(completions, **kwargs):\n    return [-len(c) / 100 for c in completions]\n"
    )
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        *TINY,
        "reward=[function]",
        "reward.function.path=my_rewards:shortness",
        "trainer.max_steps=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "metrics.jsonl").is_file()
