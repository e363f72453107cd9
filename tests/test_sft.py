"""rlvr sft: completion-only loss, loss goes down, checkpoint/resume, and rlvr train starts from its output."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, run_cli

import rlvr
from rlvr.commands.sft import Example, SFTTrainer, completion_nll, compose_sft, gsm8k_reasoning, run_sft


def _data(tmp_path, n: int = 12) -> str:
    rows = [
        {"question": f"What is {i} + {i}?", "answer": str(2 * i), "worked": f"{i} + {i} = {2 * i}"} for i in range(n)
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(tmp_path, *extra: str):
    return compose_sft(
        [
            "model=tiny",
            "task=jsonl",
            f"task.train_path={_data(tmp_path)}",
            "sft=default",
            "sft.completion_template='{worked}. The answer is {answer}.'",
            "sft.batch_size=4",
            "sft.lr=3e-3",
            "sft.progress=false",
            "sft.log_steps=0",
            "sft.threads=1",
            *extra,
        ]
    )


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_loss_is_on_completion_tokens_only():
    policy = rlvr.create("model", "tiny")
    model = policy.model.float()
    batch = [Example([5, 6, 7, 8], [9, 10, 11]), Example([12, 13], [14, 15, 16, 17, 18])]
    nll, n = completion_nll(model, batch, pad_id=0)
    assert n == 8
    # direct: each row alone, unpadded, full logits; only the completion positions count
    want = 0.0
    for e in batch:
        ids = torch.tensor([e.prompt_ids + e.completion_ids])
        logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
        P = len(e.prompt_ids)
        want -= sum(float(logp.detach()[P + t - 1, tok]) for t, tok in enumerate(e.completion_ids))
    assert float(nll) == pytest.approx(want, rel=1e-4)


def test_loss_decreases_and_train_starts_from_the_result(tmp_path):
    trainer = run_sft(_cfg(tmp_path, "sft.max_steps=12"), run_dir=tmp_path / "sft")
    losses = [json.loads(x)["loss"] for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    sft_weights = _weights(trainer.policy.model)
    final = tmp_path / "sft" / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    # rlvr train from the SFT output (model=hf loads the directory): its weights are the SFT ones
    cfg = rlvr.compose(
        [
            *TINY,
            "model=hf",
            f"model.name_or_path={final}",
            "trainer.max_steps=1",
            f"trainer.output_dir={tmp_path}/grpo",
        ]
    )
    grpo = rlvr.Trainer(cfg)
    loaded = _weights(grpo.policy.model)
    assert all(torch.equal(loaded[k], v) for k, v in sft_weights.items() if k in loaded)
    base = _weights(rlvr.create("model", "tiny").model)
    assert not torch.equal(loaded["model.layers.0.mlp.down_proj.weight"], base["model.layers.0.mlp.down_proj.weight"])
    grpo.train()
    assert (tmp_path / "grpo" / "final").is_dir()


def test_resume_continues_exactly(tmp_path):
    whole = run_sft(_cfg(tmp_path, "sft.max_steps=4"), run_dir=tmp_path / "whole")
    run_sft(_cfg(tmp_path, "sft.max_steps=2"), run_dir=tmp_path / "split")  # "interrupted" after step 2
    resumed = SFTTrainer(_cfg(tmp_path, "sft.max_steps=4"), run_dir=tmp_path / "split")
    resumed.train()
    assert resumed.step == 4
    a, b = _weights(whole.policy.model), _weights(resumed.policy.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_lora_sft_final_is_merged_and_loadable(tmp_path):
    trainer = run_sft(_cfg(tmp_path, "sft.max_steps=3", "model.lora=true", "sft.lr=5e-2"), run_dir=tmp_path / "lora")
    assert trainer.policy.is_lora and (tmp_path / "lora" / "final-adapter" / "adapter_config.json").is_file()
    final = tmp_path / "lora" / "final"
    assert not (final / "adapter_config.json").exists()
    policy = rlvr.create("model", "hf", name_or_path=str(final))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = trainer.policy.model(ids).logits
        got = policy.model(ids).logits
        base = rlvr.create("model", "tiny").model(ids).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, base, atol=1e-4)


def test_bad_target_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"row 0 has no column 'nope' used by sft.completion_template"):
        SFTTrainer(_cfg(tmp_path, "sft.completion_template='{nope}'"), run_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="sft.batch_size must be >= 1"):
        SFTTrainer(_cfg(tmp_path, "sft.batch_size=0"), run_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="sft.max_steps must be >= 1"):
        SFTTrainer(_cfg(tmp_path, "sft.max_steps=0"), run_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="row 0: sft.completion_column 'nope' is missing"):
        SFTTrainer(_cfg(tmp_path, "sft.completion_template=''", "sft.completion_column=nope"), run_dir=tmp_path / "x")


def test_gsm8k_reasoning_drops_the_final_line_and_calculator_notes():
    solution = "She sold 48/2 = <<48/2=24>>24 clips.\nSo 72.\n#### 72"
    assert gsm8k_reasoning(solution) == "She sold 48/2 = 24 clips.\nSo 72."


def test_cli_sft_with_the_gsm8k_format_preset(tmp_path):
    data = tmp_path / "gsm8k"
    data.mkdir()
    data.joinpath("train.jsonl").write_text(
        "".join(
            json.dumps({"question": f"Q{i}?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}) + "\n"
            for i in range(8)
        )
    )
    out = run_cli(
        "sft",
        "model=tiny",
        f"task.data_dir={data}",
        "sft.max_steps=2",
        "sft.progress=false",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert out.returncode == 0, out.stderr
    assert "model.name_or_path=" in out.stdout and (tmp_path / "run" / "final" / "model.safetensors").is_file()
