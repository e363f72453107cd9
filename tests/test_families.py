"""Every architecture family the presets name runs a full GRPO step with LoRA (tiny random models).

Families: llama, qwen2, qwen3, gemma3 (final-logit soft-capping), phi3 (fused qkv / gate_up), mistral.
For each: the chunked log-prob path agrees with the model's own logits, a GRPO step moves the LoRA
weights and only them, and the config presets' LoRA targets name real modules of that family.
"""

from __future__ import annotations

import pytest
import torch

from rlvr.core.config import compose
from rlvr.core.trainer import Trainer
from rlvr.modeling.causal_lm import completion_logprobs
from rlvr.plugins.models.tiny import byte_tokenizer
from rlvr.plugins.models.tiny_family import FAMILIES, TinyFamilyConfig, build_model, load_tiny_family
from tests.conftest import TINY

# preset (rlvr/conf/model/<name>.yaml) -> the architecture family its checkpoint uses
PRESETS = {
    "qwen3-4b": "qwen3",
    "qwen2.5-3b-instruct": "qwen2",
    "llama-3.2-3b-instruct": "llama",
    "llama-3.1-8b-instruct": "llama",
    "gemma-3-1b-it": "gemma3",
    "phi-4": "phi3",
    "mistral-7b-instruct-v0.3": "mistral",
    "deepseek-r1-0528-qwen3-8b": "qwen3",
    "smollm2-135m-instruct": "llama",
}


def length_reward(completions, **_):
    """Varies with the completion, so a random model's groups carry a learning signal."""
    return [len(c) / 10.0 for c in completions]


def model_logprobs(model, ids, attn, prompt_len):
    """Reference: log-softmax of the model's own full logits (its forward applies soft-capping etc.)."""
    pos = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 1)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float()
    return logits[:, prompt_len - 1 : -1].log_softmax(-1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (3, 14), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :4] = 0  # left padding
    return ids, attn


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grpo_step_with_lora(family, tmp_path):
    cfg = compose(
        [
            *TINY,
            "model=tiny_family",
            f"model.family={family}",
            "model.lora=true",
            "trainer.lr=1e-2",
            "trainer.warmup_steps=0",
            "trainer.max_steps=1",
        ]
    )
    trainer = Trainer(cfg, rewards=[length_reward], run_dir=tmp_path)
    model = trainer.policy.model
    base = model.get_base_model()
    assert type(base).__name__ == FAMILIES[family].model_class
    lora_modules = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert lora_modules == set(FAMILIES[family].lora_targets)  # phi3: the fused qkv_proj / gate_up_proj
    # LoRA adapters made non-zero so the check covers their path too
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    ids, attn = batch()
    with torch.no_grad():
        ours = completion_logprobs(model, ids, attn, 6)
        ref = model_logprobs(model, ids, attn, 6)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = trainer.train_step()
    assert metrics["grad_norm"] > 0 and torch.isfinite(torch.tensor(metrics["loss"]))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


def test_gemma3_softcapping_inside_the_chunked_path():
    """With a small cap the soft-capping changes the log-probs a lot: the chunked path must apply it."""
    tok = byte_tokenizer()
    model = build_model(TinyFamilyConfig(family="gemma3", final_logit_softcapping=0.5), tok)
    ids, attn = batch(1)
    with torch.no_grad():
        ours = completion_logprobs(model, ids, attn, 5, chunk_tokens=7)
        ref = model_logprobs(model, ids, attn, 5)
        model.config.final_logit_softcapping = None
        uncapped = model_logprobs(model, ids, attn, 5)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    assert (ours - uncapped).abs().max() > 1e-2


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_embeddings_full_finetune(tied):
    """The head gets its gradient through the chunked path: into the embedding matrix when tied."""
    tok = byte_tokenizer()
    model = build_model(TinyFamilyConfig(family="qwen3", tie_word_embeddings=tied), tok)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    ids, attn = batch(2)
    completion_logprobs(model, ids, attn, 6).sum().backward()
    ours = model.lm_head.weight.grad.clone()
    model.zero_grad()
    model_logprobs(model, ids, attn, 6).sum().backward()
    torch.testing.assert_close(ours, model.lm_head.weight.grad, atol=1e-5, rtol=1e-4)
    if not tied:
        assert model.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_targets_match_the_family(preset):
    cfg = compose([f"model={preset}"]).model
    assert cfg.name == "hf" and "/" in cfg.name_or_path
    assert cfg.lora and cfg.lora_r > 0 and cfg.lora_alpha > 0 and cfg.max_seq_length >= 1024
    assert cfg.dtype in ("bfloat16", "float32")
    policy = load_tiny_family(
        TinyFamilyConfig(
            family=PRESETS[preset], num_layers=1, lora=True, lora_target_modules=list(cfg.lora_target_modules)
        )
    )
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in policy.model.named_parameters() if "lora_A" in n}
    assert wrapped == set(cfg.lora_target_modules)


def test_sequence_budget_beyond_max_seq_length_fails_before_loading(tmp_path):
    cfg = compose([*TINY, "model.max_seq_length=64", "engine.max_prompt_length=60", "engine.max_new_tokens=8"])
    with pytest.raises(ValueError, match="model.max_seq_length=64"):
        Trainer(cfg, rewards=[length_reward], run_dir=tmp_path)
