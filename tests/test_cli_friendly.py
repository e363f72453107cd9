"""The CLI with third-party plugins and bad input: no silent traps, one-line errors, real bugs keep tracebacks.

Third-party distributions are simulated by a ``<name>.dist-info`` folder (METADATA + entry_points.txt) and
a module on PYTHONPATH, which ``importlib.metadata`` discovers exactly like an installed wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, run_cli


def make_dist(site: Path, dist: str, modules: dict[str, str]) -> None:
    """Write a fake installed distribution ``dist`` whose ``rlvr`` entry points are the given modules."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[rlvr]\n" + "".join(f"{m} = {m}\n" for m in modules))
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


def env_with(site: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), **extra}


REWARD_ARITHMETIC = """
    from dataclasses import dataclass
    from rlvr import PluginSpec, hookimpl
    from rlvr.core.rewards import RewardConfig

    @dataclass
    class HalfConfig(RewardConfig):
        value: float = 0.5

    @hookimpl
    def rlvr_rewards():
        return [PluginSpec("arithmetic", lambda cfg: (lambda completions, **kw: [cfg.value] * len(completions)),
                           HalfConfig, "always 0.5 (a third-party reward that shares the built-in's name)")]
"""

VERIFIER_UNITS = """
    from dataclasses import dataclass
    from rlvr import PluginSpec, hookimpl

    @dataclass
    class UnitsConfig:
        unit: str = "kg"

    def make(cfg):
        return lambda completions, **kw: [cfg.unit in c for c in completions]

    @hookimpl
    def rlvr_verifiers():
        return [PluginSpec("units_present", make,
                           UnitsConfig, "passes when the unit is written")]
"""


@pytest.fixture
def site(tmp_path) -> Path:
    return tmp_path / "site"


# ----- plugin name collisions and verifiers as rewards -----------------------------------------------------
def test_name_collision_fails_naming_both_and_distribution_name_chooses(site, tmp_path):
    make_dist(site, "thirdparty-rewards", {"tp_arith": REWARD_ARITHMETIC, "tp_units": VERIFIER_UNITS})
    env = env_with(site)
    # the default reward=[arithmetic] is now ambiguous: stop before anything starts, naming both
    proc = run_cli("train", *TINY, f"hydra.run.dir={tmp_path}/r0", env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ambiguous" in proc.stderr and "rlvr:arithmetic" in proc.stderr
    assert "thirdparty-rewards:arithmetic" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r0").exists()
    # distribution:name picks one; the verifier is a reward by its name, with pass/fail scores
    run_dir = tmp_path / "r1"
    proc = run_cli(
        "train",
        *TINY,
        "trainer.max_steps=1",
        "reward=[thirdparty-rewards:arithmetic,units_present]",
        "reward.units_present.pass_score=2.0",
        "reward.units_present.fail_score=-1.0",
        f"hydra.run.dir={run_dir}",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["rewards/arithmetic/mean"] == pytest.approx(0.5)  # the third-party one, not the built-in
    completions = [json.loads(x) for x in (run_dir / "completions.jsonl").read_text().splitlines()]
    for c in completions:  # each verdict mapped to exactly pass_score or fail_score
        assert c["rewards"]["units_present"] == (2.0 if "kg" in c["completion"] else -1.0)
    assert not (run_dir / "cli.log").exists()  # no empty Hydra job log
    # rlvr plugins shows both under their distribution:name and the verifier among the rewards
    listing = run_cli("plugins", env=env).stdout
    assert "thirdparty-rewards:arithmetic" in listing and "rlvr:arithmetic" in listing and "name collision" in listing
    assert "units_present" in listing.split("verifier (")[0]


def test_verifier_group_is_not_half_wired(tmp_path):
    proc = run_cli("train", *TINY, "verifier=math_answer", "--cfg", "job")
    assert proc.returncode == 2 and "reward=[" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", *TINY, "reward=[math_answer]", "reward.math_answer.pass_score=2", "--cfg", "job")
    assert proc.returncode == 0 and "pass_score: 2.0" in proc.stdout


# ----- broken and disabled plugins ----------------------------------------------------------------------------
def test_broken_entry_point_is_skipped_with_a_warning_and_listed(site, tmp_path):
    make_dist(site, "broken-plugin", {"tp_broken": "import not_a_real_module_xyz\n"})
    env = env_with(site)
    proc = run_cli("plugins", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "broken (1)" in proc.stdout and "broken-plugin" in proc.stdout and "not_a_real_module_xyz" in proc.stdout
    assert "warning" in proc.stderr and "RLVR_DISABLE_PLUGINS" in proc.stderr
    proc = run_cli("train", *TINY, "--cfg", "job", env=env)  # every other command still works
    assert proc.returncode == 0 and "broken-plugin" in proc.stderr
    proc = run_cli("plugins", env=env_with(site, RLVR_DISABLE_PLUGINS="broken-plugin"))
    assert proc.returncode == 0 and "warning" not in proc.stderr and "broken (" not in proc.stdout
    assert "disabled by RLVR_DISABLE_PLUGINS" in proc.stdout


def test_plugin_factory_that_raises_names_plugin_and_distribution(site, tmp_path):
    make_dist(
        site,
        "exploding-rewards",
        {
            "tp_explode": """
        from rlvr import PluginSpec, hookimpl

        def make(cfg):
            raise ValueError("boom: no API key")

        @hookimpl
        def rlvr_rewards():
            return [PluginSpec("exploding", make)]
    """
        },
    )
    proc = run_cli("train", *TINY, "reward=[exploding]", f"hydra.run.dir={tmp_path}/r", env=env_with(site))
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert "'exploding'" in err and "exploding-rewards" in err and "boom: no API key" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_missing_mandatory_value_names_the_key(site, tmp_path):
    make_dist(
        site,
        "needy-rewards",
        {
            "tp_needy": """
        from dataclasses import dataclass
        from rlvr import PluginSpec, hookimpl

        @dataclass
        class NeedsPath:
            path: str
            weight: float = 1.0

        @hookimpl
        def rlvr_rewards():
            return [PluginSpec("needs_path", lambda cfg: lambda completions, **kw: [0.0] * len(completions),
                               NeedsPath)]
    """
        },
    )
    proc = run_cli("train", *TINY, "reward=[needs_path]", f"hydra.run.dir={tmp_path}/r", env=env_with(site))
    assert proc.returncode == 2, proc.stderr
    assert "reward.needs_path.path=" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_real_bugs_keep_their_traceback(site, tmp_path):
    make_dist(
        site,
        "buggy-logger",
        {
            "tp_buggy": """
        from rlvr import PluginSpec, hookimpl

        class Logger:
            def on_train_start(self, *args):
                return self.no_such_attribute_xyz  # a bug, not a user error

        @hookimpl
        def rlvr_loggers():
            return [PluginSpec("buggy", lambda cfg: Logger())]
    """
        },
    )
    proc = run_cli("train", *TINY, "logger=[buggy]", f"hydra.run.dir={tmp_path}/r", env=env_with(site))
    assert proc.returncode == 1
    assert "AttributeError" in proc.stderr and "no_such_attribute_xyz" in proc.stderr
    assert "Traceback" in proc.stderr or "stack trace" in proc.stderr


# ----- config errors under --cfg job and -m, output directories ------------------------------------------------
def test_friendly_errors_under_cfg_job():
    proc = run_cli("train", *TINY, "trainer.lrr=1e-5", "--cfg", "job")
    assert proc.returncode == 2 and "Did you mean 'trainer.lr'?" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", *TINY, "loss=grpoo", "--cfg", "job")
    assert proc.returncode == 2 and "Did you mean 'grpo'?" in proc.stderr


def test_multirun_with_a_typo_fails_before_any_job_and_leaves_no_directory(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("train", "-m", *TINY, "trainer.max_steps=1", "trainer.lr=1e-6,fast", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "trainer.lr=fast" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", "-m", *TINY, "loss=grpo,dr_grpoo", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2 and "Did you mean 'dr_grpo'?" in proc.stderr
    assert not sweep.exists()


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    proc = run_cli("train", *TINY, f"hydra.run.dir={tmp_path}/taken")
    assert proc.returncode == 2 and "is an existing file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    "path, expected",
    [
        ("os:no_such_function", "has no function 'no_such_function'"),
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz'"),
    ],
)
def test_function_reward_path_errors_are_one_line(tmp_path, path, expected):
    proc = run_cli("train", *TINY, "reward=[function]", f"reward.function.path={path}", f"hydra.run.dir={tmp_path}/r")
    assert proc.returncode == 1 and expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ----- help, pipes, display ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "eval", "plugins", "show", "report", "export"])
def test_every_subcommand_has_help(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: rlvr " + command) and "Exception" not in proc.stdout + proc.stderr


def test_top_level_help_lists_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("train", "eval", "plugins", "show", "report", "export"):
        assert command in proc.stdout


def _fake_run(run_dir: Path, completions: list[str], truncated: bool = False) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.5, "reward/std": 0.1}) + "\n")
    rows = [
        {
            "step": 1,
            "prompt": f"<|im_start|>user\nq{i}<|im_end|>",
            "completion": c,
            "answer": "7",
            "rewards": {"arithmetic": 1.0},
            "advantage": 0.1,
            "truncated": truncated,
        }
        for i, c in enumerate(completions)
    ]
    (run_dir / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("command", ["show RUN", "plugins"])
def test_output_into_a_closed_pipe_is_not_an_error(tmp_path, command):
    _fake_run(tmp_path / "run", [f"line {i}\n" * 8 for i in range(400)])
    cmd = command.replace("RUN", str(tmp_path / "run"))
    proc = subprocess.run(
        f"{sys.executable} -m rlvr {cmd} --full | head -n 2"
        if command != "plugins"
        else f"{sys.executable} -m rlvr {cmd} | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert len(proc.stdout.splitlines()) <= 2
    assert "Broken pipe" not in proc.stderr and "BrokenPipeError" not in proc.stderr and "Traceback" not in proc.stderr


def test_show_makes_bidi_controls_visible_and_names_the_token_limit(tmp_path):
    _fake_run(tmp_path / "run", ["the answer is \u202e7 = 2+2\u202c ok"], truncated=True)
    proc = run_cli("show", str(tmp_path / "run"), "--width", "200")
    assert proc.returncode == 0, proc.stderr
    assert "\u202e" not in proc.stdout and "\u202c" not in proc.stdout
    assert "<U+202E>" in proc.stdout and "<U+202C>" in proc.stdout
    assert "[hit max_new_tokens]" in proc.stdout and "[truncated]" not in proc.stdout


# ----- environment and install ------------------------------------------------------------------------------
OMP_PROBE = """
    import os, sys
    with open(os.environ["OMP_PROBE_FILE"], "w") as fh:
        fh.write(os.environ.get("OMP_WAIT_POLICY", "<unset>"))
"""


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_rlvr_sets_a_passive_omp_wait_policy_unless_the_user_chose(site, tmp_path, preset, expected):
    make_dist(site, "omp-probe", {"tp_omp_probe": OMP_PROBE})
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_with(site, OMP_PROBE_FILE=str(tmp_path / "omp.txt")))
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr", "plugins"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "omp.txt").read_text() == expected


def test_matplotlib_is_in_the_default_install():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(
        d.replace(" ", "").startswith("matplotlib") for d in deps
    )  # `rlvr report` works after `pip install rlvr`


# ----- the error hierarchy and the import graph -----------------------------------------------------------------
def test_user_facing_errors_keep_their_builtin_types():
    from rlvr.core import errors, registry

    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.PluginNotFoundError, KeyError)
    assert issubclass(errors.PathNotFoundError, FileNotFoundError) and issubclass(errors.ColumnError, KeyError)
    with pytest.raises(errors.PluginNotFoundError, match="Did you mean 'grpo'"):
        registry.get("loss", "grpoo")
    with pytest.raises(errors.ConfigTypeError):
        registry.create("loss", "grpo", epsilonn=0.2)


def test_registry_does_not_import_config():  # the config -> registry dependency goes one way only
    code = (
        "import sys, rlvr; rlvr.add_plugin('reward', rlvr.PluginSpec('noop', lambda cfg: None)); "
        "print('rlvr.core.config' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "False", out.stderr


def test_cli_warnings_are_one_line():
    """A warning on the console says where and what, without the echoed source line."""
    from rlvr.cli import one_line_warning

    text = one_line_warning(UserWarning("step 6: dynamic sampling found 2 informative groups"), UserWarning, "x.py", 3)
    assert text == "x.py:3: UserWarning: step 6: dynamic sampling found 2 informative groups\n"
