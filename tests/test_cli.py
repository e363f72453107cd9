"""End-to-end: the CLI trains the tiny model and leaves a usable run directory."""

import json

from tests.conftest import TINY, run_cli


def test_train_two_steps_and_checkpoint_loads(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *TINY, "trainer.max_steps=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for key in (
        "reward/mean",
        "reward/std",
        "rewards/arithmetic/mean",
        "rewards/arithmetic/std",
        "frac_reward_zero_std",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "completion_length/mean",
        "completion_length/max",
        "completion_length/clipped_ratio",
        "step_time",
        "tokens_per_s",
    ):
        assert key in lines[0], key
    assert (run_dir / "completions.jsonl").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    tok = AutoTokenizer.from_pretrained(run_dir / "final")
    assert model.config.num_hidden_layers == 2 and tok.chat_template


def test_kl_metric_when_beta_positive(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *TINY, "trainer.max_steps=1", "loss.beta=0.04", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kl" in json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_same_seed_same_metrics(tmp_path):
    out = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        proc = run_cli("train", *TINY, "trainer.max_steps=2", f"hydra.run.dir={run_dir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        out.append(
            [
                {k: v for k, v in r.items() if "time" not in k and "per_s" not in k and not k.startswith("memory/")}
                for r in rows
            ]
        )  # peak memory is the process's, not the run's
    assert out[0] == out[1]


def test_unknown_plugin_fails_before_loading(tmp_path):
    proc = run_cli("train", "model=tiny", "loss=grpoo", f"hydra.run.dir={tmp_path}/r")
    assert proc.returncode != 0
    assert "grpo" in proc.stderr and "Available options" in proc.stderr
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_unknown_key_suggests_closest(tmp_path):
    proc = run_cli("train", "model=tiny", "trainer.lrr=1e-5")
    assert proc.returncode == 2
    assert "trainer.lr" in proc.stderr and "Keys at trainer" in proc.stderr


def test_cfg_job_prints_config():
    proc = run_cli("train", "model=tiny", "loss=dr_grpo", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dr_grpo" in proc.stdout and "num_generations" in proc.stdout


def test_multirun_sweep(tmp_path):
    proc = run_cli(
        "train", "-m", *TINY, "trainer.max_steps=1", "trainer.lr=1e-6,5e-6", f"hydra.sweep.dir={tmp_path}/sweep"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "sweep" / "0" / "metrics.jsonl").is_file()
    assert (tmp_path / "sweep" / "1" / "metrics.jsonl").is_file()
    lrs = {json.loads((tmp_path / "sweep" / str(i) / "config.json").read_text())["trainer"]["lr"] for i in (0, 1)}
    assert lrs == {1e-6, 5e-6}


def test_plugins_lists_kinds_and_distribution():
    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr
    for word in ("reward", "loss", "model", "engine", "task", "arithmetic", "smollm2", "grpo"):
        assert word in proc.stdout
    assert " rlvr " in proc.stdout  # the distribution column


def test_eval_reports_accuracy(tmp_path):
    out = tmp_path / "eval.json"
    proc = run_cli("eval", "model=tiny", "limit=3", "num_samples=2", "engine.max_new_tokens=4", f"output={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert 0.0 <= result["eval/greedy_accuracy"] <= 1.0 and result["eval/num_prompts"] == 3.0
    assert "eval/sampled_pass@1" in result


def test_eval_of_missing_checkpoint_is_a_clear_error(tmp_path):
    proc = run_cli("eval", "model=tiny", f"checkpoint={tmp_path}/nope")
    assert proc.returncode != 0 and "no such directory" in proc.stderr


def test_python_api_with_plain_reward_function(tmp_path):
    import rlvr

    calls = []

    def short_answer(completions, answer, **kw):
        calls.append(len(completions))
        return [1.0 if len(c) < 5 else 0.0 for c in completions]

    cfg = rlvr.compose([*TINY, "trainer.max_steps=1"])
    trainer = rlvr.Trainer(cfg, rewards=[short_answer], run_dir=tmp_path / "api")
    metrics = trainer.train()
    assert calls == [4] and "rewards/short_answer/mean" in metrics
    assert (tmp_path / "api" / "final" / "config.json").is_file()
