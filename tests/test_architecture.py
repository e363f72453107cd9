"""The step's phases, plugin contracts, advantage estimators, logger callbacks, and resume/None-reward/Ctrl-C
behaviour of the loop (issue: architecture; user's path)."""

from __future__ import annotations

import ast
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch

import rlvr
from rlvr.core import registry
from rlvr.core.callbacks import logger_manager
from rlvr.core.config import TrainerConfig
from rlvr.core.contracts import ContractError, check
from tests.conftest import GSM8K_DIR, REPO, TINY, run_cli


# ----- the step is a sequence of phases ----------------------------------------------------------------------
def test_train_step_runs_the_phases_in_order(tmp_path, monkeypatch):
    trainer = rlvr.Trainer(rlvr.compose(TINY + [f"trainer.output_dir={tmp_path}"]))
    seen = []
    for phase in ("rollout", "score", "compute_advantages", "reference_logprobs", "optimise", "step_metrics"):
        original = getattr(trainer, phase)

        def wrapped(*args, _name=phase, _original=original, **kwargs):
            seen.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(trainer, phase, wrapped)
    metrics = trainer.train_step()
    assert seen == ["rollout", "score", "compute_advantages", "reference_logprobs", "optimise", "step_metrics"]
    assert trainer.step == 1 and metrics["frac_scored"] == 1.0


def test_trainer_accepts_a_trainer_config_instance_and_saves(tmp_path):
    """Regression: save() / resume read self.cfg['trainer'].get(...), which a TrainerConfig instance lacks."""
    tc = TrainerConfig(
        max_steps=1, prompts_per_step=2, num_generations=2, progress=False, eval_steps=0, threads=1, keep_checkpoints=1
    )
    cfg = {
        "trainer": tc,
        "task": {"name": "arithmetic"},
        "loss": {"name": "grpo"},
        "logger": {},
        "engine": {"name": "hf", "max_new_tokens": 4},
        "model": {"name": "tiny"},
        "reward": {"arithmetic": {}},
    }
    trainer = rlvr.Trainer(cfg, run_dir=tmp_path)
    trainer.train()
    assert (tmp_path / "checkpoints" / "checkpoint-1" / "COMPLETE").is_file()
    assert (tmp_path / "final").is_dir()


# ----- contracts ---------------------------------------------------------------------------------------------
class GoodLoss:
    beta = 0.0
    needs_entropy = False

    def active_tokens(self, mask, truncated):
        return int(mask.sum())

    def __call__(
        self, logps, old_logps, ref_logps, advantages, mask, truncated, *, num_sequences, num_tokens, entropies=None
    ):
        return -(logps * mask).sum() / num_tokens, {}


class NoEntropyFlag:
    beta = 0.0
    active_tokens = GoodLoss.active_tokens
    __call__ = GoodLoss.__call__


class OldSignature:
    """Written to the hookspec's old documented signature: no num_sequences / num_tokens."""

    beta = 0.0
    needs_entropy = False

    def active_tokens(self, mask, truncated):
        return int(mask.sum())

    def __call__(self, logps, old_logps, ref_logps, advantages, mask, truncated):
        return logps.sum(), {}


def test_a_loss_satisfying_the_contract_passes():
    loss = GoodLoss()
    assert check("loss", loss, "good") is loss


def test_a_loss_missing_an_attribute_fails_naming_it():
    with pytest.raises(ContractError, match=r"loss plugin 'bad'.*Loss contract.*missing needs_entropy"):
        check("loss", NoEntropyFlag(), "bad")


def test_a_loss_with_the_wrong_call_signature_fails_naming_the_parameter():
    with pytest.raises(ContractError, match=r"parameter 'num_sequences' of __call__"):
        check("loss", OldSignature(), "old")


def test_an_engine_without_sampling_settings_fails():
    class Engine:
        importance_sampling = None

        @dataclass
        class Cfg:
            max_new_tokens: int = 4

        cfg = Cfg()

        def generate(self, policy, prompts, num_generations, seeds, greedy=False):
            raise AssertionError

    with pytest.raises(ContractError, match=r"cfg.temperature, cfg.max_prompt_length"):
        check("engine", Engine(), "e")


def test_a_logger_without_callbacks_fails_at_creation():
    with pytest.raises(ContractError, match="none of the callbacks on_train_start, on_step_end, on_train_end"):
        check("logger", object(), "silent")


def test_registry_create_checks_the_contract():
    from rlvr.core.registry import PluginSpec, add_plugin

    add_plugin("loss", PluginSpec("old_signature_loss", lambda cfg: OldSignature()))
    try:
        with pytest.raises(ContractError, match="old_signature_loss"):
            registry.create("loss", "old_signature_loss")
    finally:
        registry._REGISTRY = None  # drop the runtime plugin for the other tests


# every registered plugin, built with its defaults (or the minimal parameters it needs), meets its contract
NEEDS = {
    ("reward", "function"): {"path": "math:fsum"},
    ("verifier", "function"): {"path": "math:fsum"},
    ("model", "hf"): None,
    ("model", "smollm2"): None,
    ("engine", "vllm"): None,
    ("task", "jsonl"): None,
    ("task", "hf"): None,
    ("reward", "reward_model"): None,
    ("logger", "wandb"): {"mode": "offline"},
    ("loss", "dr_grpo"): {"max_completion_length": 8},
    ("reward", "rubric"): {"criteria": [{"kind": "contains", "keywords": ["x"]}]},
    ("task", "gsm8k"): {"data_dir": str(GSM8K_DIR)} if GSM8K_DIR.is_dir() else None,
    ("env", "openenv"): None,  # needs an installed environment package: checked in tests/test_env_adapters.py
    ("task", "verifiers"): None,  # likewise
    ("task", "gsm8k_python"): {"data_dir": str(GSM8K_DIR), "max_train_rows": 8} if GSM8K_DIR.is_dir() else None,
}


def _all_plugins():
    for kind in ("loss", "advantage", "engine", "task", "reward", "verifier", "model", "logger", "env"):
        for name in registry.names(kind):
            yield kind, name


@pytest.mark.parametrize("kind,name", list(_all_plugins()))
def test_every_registered_plugin_meets_its_contract(kind, name):
    params = NEEDS.get((kind, name), {})
    if params is None:
        pytest.skip(
            f"{kind} {name!r} needs a model file, a dataset file or vLLM; its contract is checked by "
            "its own tests through registry.create"
        )
    try:
        obj = registry.create(kind, name, **params)
    except (ImportError, ModuleNotFoundError) as exc:
        pytest.skip(f"optional dependency missing: {exc}")
    assert check(kind, obj, name) is obj


# ----- import graph ------------------------------------------------------------------------------------------
def _rlvr_imports(path, module):
    """The ``rlvr...`` modules (and ``module.name`` for each ``from module import name``) that the file at
    ``path``, the module ``module``, imports anywhere (top level or inside functions), relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [name for name in found if name == "rlvr" or name.startswith("rlvr.")]


def _modules(folder):
    for path in sorted((REPO / "rlvr" / folder).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_plugins_of_one_family_never_import_plugins_of_another():
    """Plugins are leaf modules: they import rlvr.core and shared packages (rlvr.sandbox, rlvr.modeling, ...),
    never a plugin of another family (an env importing a reward plugin to borrow its sandbox, say)."""
    crossing = []
    for path, module in _modules("plugins"):
        family = module.split(".")[2] if module.count(".") >= 2 else None
        for name in _rlvr_imports(path, module):
            parts = name.split(".")
            if parts[:2] == ["rlvr", "plugins"] and len(parts) >= 3 and parts[2] != family:
                crossing.append(f"{module} imports {name}")
    assert not crossing, "plugins import plugins of another family:\n" + "\n".join(crossing)


def test_the_shared_sandbox_imports_no_plugin():
    leaks = [f"{m} imports {n}" for p, m in _modules("sandbox") for n in _rlvr_imports(p, m) if "plugins" in n]
    assert not leaks and list(_modules("sandbox")), leaks


# ----- advantage estimators ----------------------------------------------------------------------------------
R = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])  # two groups of 3


@pytest.mark.parametrize(
    "name,expected",
    [
        # group 1: mean 1/3, unbiased std sqrt(1/3); group 2: all equal → 0 (0 / (0 + eps))
        ("grpo", [(2 / 3) / (1 / 3) ** 0.5, (-1 / 3) / (1 / 3) ** 0.5, (-1 / 3) / (1 / 3) ** 0.5, 0, 0, 0]),
        ("dr_grpo", [2 / 3, -1 / 3, -1 / 3, 0, 0, 0]),
        ("rloo", [1.0, -0.5, -0.5, 0, 0, 0]),  # r_i − mean of the other two
    ],
)
def test_advantage_estimators_match_hand_computed_values(name, expected):
    est = registry.create("advantage", name, eps=1e-12)
    assert torch.allclose(est(R, 3), torch.tensor(expected), atol=1e-6)


def test_reinforce_pp_divides_by_the_batch_std():
    est = registry.create("advantage", "reinforce_pp", eps=1e-12)
    centred = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])
    assert torch.allclose(est(R, 3), centred / R.std(), atol=1e-6)


def test_advantage_is_chosen_by_config_and_the_trainer_shortcuts_override_it(tmp_path):
    trainer = rlvr.Trainer(rlvr.compose(TINY + ["advantage=rloo", f"trainer.output_dir={tmp_path}"]))
    assert (trainer.advantage.baseline, trainer.advantage.scaling) == ("rloo", "none")
    trainer = rlvr.Trainer(rlvr.compose(TINY + ["trainer.advantage_scaling=batch", f"trainer.output_dir={tmp_path}"]))
    assert (trainer.advantage.baseline, trainer.advantage.scaling) == ("mean", "batch")


def test_bad_advantage_settings_fail_with_the_choices():
    with pytest.raises(ValueError, match="scaling='zscore': choose group, batch or none"):
        registry.create("advantage", "grpo", scaling="zscore")
    code = run_cli("train", *TINY, "advantage=grpoo")
    assert code.returncode == 2 and "Did you mean 'grpo'" in code.stderr


# ----- logger callbacks through pluggy --------------------------------------------------------------------------
def test_loggers_are_called_in_order_and_only_for_what_they_implement():
    calls = []

    class OnlySteps:
        def on_step_end(self, step, metrics, samples):
            calls.append(("steps", step))

    class Everything:
        def on_train_start(self, run_dir, config, start_step):
            calls.append(("all", "start"))

        def on_step_end(self, step, metrics, samples):
            calls.append(("all", step))

        def on_train_end(self, metrics):
            calls.append(("all", "end"))

    hook = logger_manager([("a", OnlySteps()), ("b", Everything())]).hook
    hook.on_train_start(run_dir=".", config={}, start_step=0)
    hook.on_step_end(step=1, metrics={}, samples=[])
    hook.on_train_end(metrics={})
    assert calls == [("all", "start"), ("steps", 1), ("all", 1), ("all", "end")]


def test_a_logger_callback_with_an_unknown_argument_fails_at_registration():
    import pluggy

    class Wrong:
        def on_step_end(self, step, metrics, samples, extra):
            pass

    with pytest.raises(pluggy.PluginValidationError, match="extra"):
        logger_manager([("wrong", Wrong())])


# ----- resume with a changed config ------------------------------------------------------------------------------
def test_resume_with_a_changed_config(tmp_path):
    run = [*TINY, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}/run"]
    assert run_cli("train", *run).returncode == 0
    original = (tmp_path / "run" / "config.json").read_text()

    refused = run_cli("train", *run, "trainer.lr=1e-3", "loss.epsilon=0.3")
    assert refused.returncode == 2, refused.stderr
    assert "trainer.lr: 7e-05 → 0.001" in refused.stderr and "loss.epsilon: 0.2 → 0.3" in refused.stderr
    assert "trainer.resume=none" in refused.stderr and "hydra.run.dir" in refused.stderr
    assert (tmp_path / "run" / "config.json").read_text() == original

    extended = run_cli("train", *[o for o in run if "max_steps" not in o], "trainer.max_steps=3")
    assert extended.returncode == 0, extended.stderr
    assert "changed settings: trainer.max_steps: 2 → 3" in extended.stdout
    assert (tmp_path / "run" / "config.json").read_text() == original  # the history is kept, not overwritten
    record = json.loads((tmp_path / "run" / "resume-2.json").read_text())
    assert record == {"step": 2, "changes": {"trainer.max_steps": [2, 3]}}
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


# ----- a reward that never scores --------------------------------------------------------------------------------
def test_all_none_rewards_write_null_warn_and_stop(tmp_path):
    (tmp_path / "never.py").write_text("def never(completions, **kw):\n    return [None] * len(completions)\n")
    env = {"PYTHONPATH": str(tmp_path), "PYTHONWARNINGS": "default"}
    proc = run_cli(
        "train",
        *TINY,
        "reward=[function]",
        "reward.function.path=never:never",
        "trainer.max_steps=5",
        "trainer.max_bad_steps=2",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 1
    assert "step 1: no completion was scored (every reward returned None: function)" in proc.stderr
    assert "2 steps in a row had no scored completion" in proc.stderr and "trainer.max_bad_steps" in proc.stderr
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text
    rows = [json.loads(x) for x in text.splitlines()]
    # step 2 stops the run before its metrics are written
    assert [r["rewards/function/mean"] for r in rows] == [None] and rows[0]["reward/mean"] is None


def test_prompts_per_step_beyond_the_dataset_warns(tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(3)))
    cfg = rlvr.compose(
        [
            "model=tiny",
            "task=jsonl",
            f"task.train_path={data}",
            "trainer.prompts_per_step=4",
            "trainer.num_generations=2",
            "engine.max_new_tokens=4",
            "trainer.progress=false",
            "task.chat=false",
            f"trainer.output_dir={tmp_path}/run",
        ]
    )
    with pytest.warns(UserWarning, match="prompts_per_step=4 is larger than the task's 2 training rows"):
        rlvr.Trainer(cfg)


# ----- Ctrl-C ----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_a_checkpoint_after_the_step_and_the_same_command_resumes(tmp_path):
    args = [*TINY, "trainer.max_steps=400", f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlvr", "train", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    step = int(err.split("interrupted after step ")[1].split(";")[0])
    assert f"checkpoint saved at {tmp_path}/run/checkpoints/checkpoint-{step}" in err
    assert "Run the same command again to resume" in err
    assert (tmp_path / "run" / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").is_file()
    assert not math.isnan(step)


def test_a_one_row_dataset_says_the_row_is_held_out_and_how_to_change_it(tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    proc = run_cli("train", *TINY, "task=jsonl", f"task.train_path={data}", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 1
    assert "1 row(s) and at least one is held out for evaluation" in proc.stderr
    assert "task.eval_path=FILE" in proc.stderr and "Traceback" not in proc.stderr


def test_a_small_dataset_warns_which_rows_are_held_out(tmp_path):
    from rlvr.plugins.tasks.jsonl import JsonlTaskConfig, split_rows

    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(5)]
    with pytest.warns(UserWarning, match="1 of the dataset's 5 rows are held out for evaluation"):
        train, held = split_rows(rows, None, JsonlTaskConfig(train_path="x"))
    assert len(train) == 4 and len(held) == 1
