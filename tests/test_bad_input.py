"""Bad input through the CLI: a clear message naming the fault, a non-zero exit code, nothing half-written.

Most cases call ``rlvr.cli.main`` in this process (the same code path as the ``rlvr`` script, minus
interpreter start-up); ``test_exit_code_of_the_real_process`` checks the process exit code itself.
Exit code 2: the command line / config is wrong (nothing starts); 1: the run failed.
"""

import json
import sys

import pytest

from tests.conftest import TINY, run_cli


@pytest.fixture
def cli(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["rlvr"])  # cmd_train rewrites sys.argv for Hydra

    def run(*args: str) -> tuple[int, str, str]:
        from rlvr.cli import main

        with pytest.raises(SystemExit) as exc:
            main(list(args))
        out = capsys.readouterr()
        return int(exc.value.code or 0), out.out, out.err

    return run


def nothing_written(run_dir) -> bool:
    """No metrics, completions, checkpoint or final model (Hydra's own .hydra/ may exist)."""
    return not any(
        (run_dir / name).exists() for name in ("metrics.jsonl", "completions.jsonl", "checkpoints", "final")
    )


# ----- config: names, keys, types, ranges -----------------------------------------------------------
@pytest.mark.parametrize(
    "override, group, expected",
    [
        ("loss=grpoo", "loss", "Did you mean 'grpo'?"),
        ("reward=[arithmetc]", "reward", "Did you mean 'arithmetic'?"),
        ("logger=[tensorbord]", "logger", "Did you mean 'tensorboard'?"),
        ("task=gsm9k", "task", "Did you mean 'gsm8k'?"),
    ],
)
def test_unknown_plugin_lists_the_valid_ones(cli, tmp_path, override, group, expected):
    code, _, err = cli("train", *TINY, override, f"hydra.run.dir={tmp_path}/run")
    assert code == 2
    assert f"unknown {group}" in err and expected in err and f"Available options in '{group}'" in err
    from rlvr.core.registry import names

    assert all(n in err for n in names(group))  # every valid name is listed
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        # a key that does not exist: the closest one is suggested
        ("trainer.num_generation=4", ["Did you mean 'trainer.num_generations'?", "Keys at trainer"]),
        ("loss.epsilonn=0.2", ["Did you mean 'loss.epsilon'?"]),
        ("engine.max_new_token=8", ["Did you mean 'engine.max_new_tokens'?"]),
        # a value of the wrong type: the override and the type it needs
        ("trainer.lr=fast", ["trainer.lr=fast", "could not be converted to Float"]),
        ("trainer.num_generations=2.5", ["trainer.num_generations=2.5", "could not be converted to Integer"]),
        ("model.lora=maybe", ["model.lora=maybe", "not a valid bool"]),
    ],
)
def test_unknown_key_or_wrong_type_fails_before_anything_starts(cli, tmp_path, override, expected):
    code, _, err = cli("train", *TINY, override, f"hydra.run.dir={tmp_path}/run")
    assert code == 2 and all(e in err for e in expected), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.num_generations=1", "trainer.num_generations must be >= 2"),
        ("trainer.lr=0", "trainer.lr must be > 0"),
        ("trainer.lr=-1e-5", "trainer.lr must be > 0"),
        ("loss.epsilon=0", "epsilon must be in (0, 1)"),
        ("loss.epsilon=-0.2", "epsilon must be in (0, 1)"),
        ("engine.max_new_tokens=0", "engine.max_new_tokens must be > 0"),
        ("engine.max_new_tokens=-5", "engine.max_new_tokens must be > 0"),
        # the batch is prompts_per_step x num_generations (2 x 2 = 4 here): divisible by construction, so what can
        # be wrong is the micro-batch not dividing it
        ("trainer.micro_batch_size=3", "trainer.micro_batch_size=3 does not divide the batch"),
        ("trainer.max_steps=0", "trainer.max_steps must be >= 1"),
    ],
)
def test_out_of_range_value(cli, tmp_path, override, expected):
    code, _, err = cli("train", *TINY, override, f"hydra.run.dir={tmp_path}/run")
    assert code == 1 and expected in err, err
    assert nothing_written(tmp_path / "run")


def test_dr_grpo_max_completion_length_must_be_positive(cli, tmp_path):
    code, _, err = cli("train", *TINY, "loss=dr_grpo", "loss.max_completion_length=0", f"hydra.run.dir={tmp_path}/run")
    assert code == 1 and "max_completion_length must be a positive integer" in err
    assert nothing_written(tmp_path / "run")


# ----- data -----------------------------------------------------------------------------------------
def _jsonl_task(path) -> list[str]:
    return ["task=jsonl", f"task.train_path={path}"]


def test_dataset_missing(cli, tmp_path):
    code, _, err = cli("train", *TINY, *_jsonl_task(tmp_path / "nope.jsonl"), f"hydra.run.dir={tmp_path}/run")
    assert code == 1 and "nope.jsonl" in err and "does not exist" in err
    assert nothing_written(tmp_path / "run")


def test_dataset_empty(cli, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    code, _, err = cli("train", *TINY, *_jsonl_task(tmp_path / "empty.jsonl"), f"hydra.run.dir={tmp_path}/run")
    assert code == 1 and "empty.jsonl" in err and "is empty" in err
    assert nothing_written(tmp_path / "run")


def test_dataset_not_json_lines_names_the_line(cli, tmp_path):
    good = json.dumps({"question": "1+1?", "answer": "2"})
    (tmp_path / "bad.jsonl").write_text(f"{good}\n{good}\nquestion,answer\n")
    code, _, err = cli("train", *TINY, *_jsonl_task(tmp_path / "bad.jsonl"), f"hydra.run.dir={tmp_path}/run")
    assert code == 1 and "bad.jsonl:3: not valid JSON" in err
    assert nothing_written(tmp_path / "run")


def test_row_without_the_answer_column_names_its_index(cli, tmp_path):
    rows = [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(20)]
    rows[7] = {"question": "7+1?", "solution": "8"}
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = cli(
        "train",
        *TINY,
        *_jsonl_task(tmp_path / "rows.jsonl"),
        "task.eval_path=" + str(tmp_path / "rows.jsonl"),
        f"hydra.run.dir={tmp_path}/run",
    )
    assert code == 1 and "row 7 has no 'answer' column" in err and "task.answer_column" in err
    assert nothing_written(tmp_path / "run")


# ----- model ----------------------------------------------------------------------------------------
def test_model_path_that_does_not_exist(cli, tmp_path):
    code, _, err = cli(
        "train", *TINY, "model=hf", f"model.name_or_path={tmp_path}/no-model", f"hydra.run.dir={tmp_path}/run"
    )
    assert code == 1 and "no-model" in err and "no such directory" in err
    assert nothing_written(tmp_path / "run")


def test_chat_template_missing(cli, tmp_path):
    from rlvr.plugins.models.tiny import TinyModelConfig, load_tiny

    policy = load_tiny(TinyModelConfig())
    policy.tokenizer.chat_template = None
    policy.model.save_pretrained(tmp_path / "base-model")
    policy.tokenizer.save_pretrained(tmp_path / "base-model")
    code, _, err = cli(
        "train", *TINY, "model=hf", f"model.name_or_path={tmp_path / 'base-model'}", f"hydra.run.dir={tmp_path}/run"
    )
    assert code == 1 and "no chat template" in err and "task.chat=false" in err
    assert nothing_written(tmp_path / "run")


# ----- rewards --------------------------------------------------------------------------------------
REWARDS = """
def raises(completions, **columns):
    return [1.0 / (len(c) - len(c)) for c in completions]

def too_few(completions, **columns):
    return [1.0]
"""


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "bad_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("bad_rewards", None)
    return "bad_rewards"


def test_reward_that_raises(cli, tmp_path, reward_module):
    code, _, err = cli(
        "train",
        *TINY,
        "reward=[function]",
        f"reward.function.path={reward_module}:raises",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert code == 1
    assert "reward 'function' raised ZeroDivisionError" in err and "completion:" in err
    assert "reward.function.on_error=zero" in err  # how to go on instead
    assert nothing_written(tmp_path / "run")


def test_reward_that_raises_can_score_zero_and_go_on(cli, tmp_path, reward_module):
    code, _, err = cli(
        "train",
        *TINY,
        "trainer.max_steps=1",
        "reward=[arithmetic,function]",
        f"reward.function.path={reward_module}:raises",
        "reward.function.on_error=zero",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert code == 0, err
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert row["rewards/function/mean"] == 0.0


def test_reward_with_the_wrong_length(cli, tmp_path, reward_module):
    code, _, err = cli(
        "train",
        *TINY,
        "reward=[function]",
        f"reward.function.path={reward_module}:too_few",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert code == 1 and "returned 1 scores for 4 completions" in err
    assert nothing_written(tmp_path / "run")


# ----- non-finite loss ------------------------------------------------------------------------------
# a reward weight of 1e39 overflows float32: every total reward is ±inf, the advantages and the loss NaN
NAN = ["reward.arithmetic.weight=1e39"]


def test_non_finite_loss_is_skipped_with_a_warning_and_counted(cli, tmp_path):
    from safetensors.torch import load_file

    from rlvr.plugins.models.tiny import TinyModelConfig, load_tiny

    with pytest.warns(UserWarning, match=r"step 2: non-finite loss or gradient; the update was skipped \(2 in a row"):
        code, out, err = cli(
            "train", *TINY, *NAN, "trainer.max_steps=2", "trainer.max_bad_steps=5", f"hydra.run.dir={tmp_path}/run"
        )
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1.0, 2.0]
    initial = load_tiny(TinyModelConfig()).model.state_dict()
    final = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert all((final[k] == initial[k]).all() for k in final)  # skipped: the weights never moved


def test_too_many_non_finite_losses_in_a_row_stop_the_run(cli, tmp_path):
    with pytest.warns(UserWarning, match="non-finite loss"):
        code, _, err = cli(
            "train", *TINY, *NAN, "trainer.max_steps=5", "trainer.max_bad_steps=2", f"hydra.run.dir={tmp_path}/run"
        )
    assert code == 1
    assert "2 steps in a row had a non-finite loss or gradient" in err and "trainer.max_bad_steps" in err
    assert not (tmp_path / "run" / "final").exists()


# ----- disk full while checkpointing ----------------------------------------------------------------
def test_out_of_disk_while_checkpointing_keeps_the_previous_checkpoint(cli, tmp_path, monkeypatch):
    from rlvr.core.checkpoint import MARKER, latest_checkpoint

    run_dir = tmp_path / "run"
    args = ["train", *TINY, "trainer.max_steps=4", "trainer.save_steps=2", f"hydra.run.dir={run_dir}"]
    monkeypatch.setenv("RLVR_TEST_CRASH_AT", "checkpoint-write:4:enospc")  # ENOSPC after the weights of step 4
    code, _, err = cli(*args)
    assert code == 1
    assert "could not write checkpoint" in err and "no space left on device" in err
    assert "checkpoint-2 is intact" in err and "run the same command again" in err
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]  # no half-written checkpoint-4 left
    assert (ckpts / "checkpoint-2" / MARKER).is_file() and latest_checkpoint(run_dir).name == "checkpoint-2"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ckpts / "checkpoint-2")  # still a loadable model

    monkeypatch.delenv("RLVR_TEST_CRASH_AT")  # space freed: the same command resumes from checkpoint-2
    code, out, err = cli(*args)
    assert code == 0, err
    assert "resumed from" in out and "checkpoint-2 at step 2" in out
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_save_checkpoint_wraps_a_torch_disk_error(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError('... file write failed'): still a clear message, no leftovers."""
    import torch

    from rlvr.core import checkpoint as ck
    from rlvr.plugins.models.tiny import TinyModelConfig, load_tiny

    policy = load_tiny(TinyModelConfig())
    ck.save_checkpoint(tmp_path, 1, policy, {"x": 1})

    def full(*a, **k):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
            "data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ck.CheckpointWriteError, match="no space left on device") as exc:
        ck.save_checkpoint(tmp_path, 2, policy, {"x": 2})
    assert "checkpoint-1 is intact" in str(exc.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-1"]


# ----- the real process -----------------------------------------------------------------------------
def test_exit_code_of_the_real_process(tmp_path):
    proc = run_cli("train", *TINY, "trainer.num_generations=1", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 1 and "trainer.num_generations must be >= 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert nothing_written(tmp_path / "run")
