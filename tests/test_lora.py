"""LoRA and QLoRA: saving the adapter alone or merged (loadable by plain transformers / peft), and QLoRA
(NF4 base weights through bitsandbytes) training on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr.core.config import compose
from rlvr.core.policy import save_policy
from rlvr.core.trainer import Trainer
from rlvr.plugins.models.tiny import byte_tokenizer
from rlvr.plugins.models.tiny_family import TinyFamilyConfig, build_model, load_tiny_family
from tests.conftest import TINY


def length_reward(completions, **_):
    return [len(c) / 10.0 for c in completions]


def randomise_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


IDS = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["qwen2", "phi3"])  # q/k/v biases; fused projections and an untied head
def test_adapter_and_merged_load_with_plain_libraries(family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = TinyFamilyConfig(family=family, lora=True)
    policy = load_tiny_family(cfg)
    randomise_adapters(policy.model)
    want = logits(policy.model, IDS)
    save_policy(policy, str(tmp_path / "adapter"))
    save_policy(policy, str(tmp_path / "merged"), merged=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()

    base = build_model(cfg, byte_tokenizer())  # the same seeded base weights
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    torch.testing.assert_close(logits(adapted, IDS), want, atol=1e-5, rtol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == type(base).__name__
    torch.testing.assert_close(logits(merged, IDS), want, atol=1e-5, rtol=1e-5)
    assert policy.model.peft_config  # merging left the trained policy as it was
    torch.testing.assert_close(logits(policy.model, IDS), want)


def test_trainer_save_merged_writes_final_merged(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = compose([*TINY, "model.lora=true", "trainer.max_steps=1", "trainer.save_merged=true"])
    trainer = Trainer(cfg, rewards=[length_reward], run_dir=tmp_path)
    trainer.train()
    final = tmp_path / "final"
    assert (final / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(final / "merged")
    torch.testing.assert_close(logits(merged, IDS), logits(trainer.policy.model, IDS), atol=1e-5, rtol=1e-5)


def test_qlora_nf4_grpo_step_on_cpu(tmp_path):
    """bitsandbytes NF4 base weights (frozen) with float32 LoRA adapters: a GRPO step on the CPU, then the
    merged (de-quantized) model loads in plain transformers and computes what the 4-bit policy computes."""
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    cfg = compose(
        [
            *TINY,
            "model=tiny_family",
            "model.family=qwen2",
            "model.load_in_4bit=true",
            "trainer.lr=1e-2",
            "trainer.warmup_steps=0",
            "trainer.max_steps=1",
        ]
    )
    trainer = Trainer(cfg, rewards=[length_reward], run_dir=tmp_path)
    model = trainer.policy.model
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert trainer.policy.is_lora and len(quantized) == 2 * 7  # every q/k/v/o/gate/up/down of the 2 layers
    assert all(m.weight.quant_state.quant_type == "nf4" for m in quantized)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    before = {n: p.detach().clone() for n, p in trainable.items()}
    metrics = trainer.train_step()  # generation (eval, no grad) first, then the update
    assert metrics["grad_norm"] > 0
    # every lora_B moved (lora_A's gradient is zero while B is): the first layer's too, so gradients flow
    # back through the frozen 4-bit layers
    assert all(not torch.equal(p, before[n]) for n, p in trainable.items() if "lora_B" in n)
    save_policy(trainer.policy, str(tmp_path / "merged"), merged=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    torch.testing.assert_close(logits(merged, IDS), logits(model, IDS), atol=1e-4, rtol=1e-4)


def test_qlora_gradients_unchanged_by_an_eval_pass():
    """On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights at the first eval-mode no-grad forward into a
    path without autograd; rlvr turns that off, so the gradients after generation are those before it."""
    pytest.importorskip("bitsandbytes")
    policy = load_tiny_family(TinyFamilyConfig(family="llama", lora=True, load_in_4bit=True))
    model = policy.model
    randomise_adapters(model)

    def grads():
        model.zero_grad()
        model.train()
        model(input_ids=IDS).logits.float().pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    first = grads()
    model.eval()
    logits(model, IDS)  # what generation does
    second = grads()
    for n in first:
        torch.testing.assert_close(second[n], first[n], msg=n)
