"""Tools (schemas, parsing per family, timeouts) and the built-in environments' tasks and rewards, including
adversarial trajectories."""

from __future__ import annotations

import time

import pytest

import rlvr
from rlvr.core.tools import ToolCall, detect_format, parse_tool_calls, run_tool, tool_schema
from rlvr.plugins.envs.calculator import calculator, tool_use_score


def test_schema_from_signature_and_docstring():
    fn = tool_schema(calculator)["function"]
    assert fn["name"] == "calculator" and fn["parameters"]["required"] == ["expression"]
    assert fn["parameters"]["properties"]["expression"]["type"] == "string"
    assert "123 * 456" in fn["parameters"]["properties"]["expression"]["description"]

    def undocumented(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="undocumented"):
        tool_schema(undocumented)


@pytest.mark.parametrize(
    "fmt,text,name,args",
    [
        ("hermes", 'ok <tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>', "f", {"x": 1}),
        ("rlvr", '<tool_call>{"name": "f", "arguments": "{\\"x\\": 2}"}</tool_call>', "f", {"x": 2}),
        ("llama3", '<|python_tag|>{"name": "f", "parameters": {"x": 3}}', "f", {"x": 3}),
        ("llama3", '{"name": "f", "parameters": {"x": 4}}', "f", {"x": 4}),
        ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"x": 5}}]', "f", {"x": 5}),
    ],
)
def test_parse_each_family(fmt, text, name, args):
    (call,) = parse_tool_calls(text, fmt)
    assert call.error is None and call.name == name and call.arguments == args


def test_parse_malformed_and_absent():
    assert parse_tool_calls("The answer is 5.", "hermes") == []
    assert parse_tool_calls("The answer is 5.", "llama3") == []
    assert parse_tool_calls("no calls", "mistral") == []
    for fmt, text in [
        ("rlvr", "<tool_call>{name: f}</tool_call>"),
        ("rlvr", '<tool_call>{"arguments": {}}'),
        ("rlvr", '<tool_call>["f"]</tool_call>'),
        ("mistral", "[TOOL_CALLS][{"),
        ("llama3", '{"name": "f", "parameters": 3}'),
    ]:
        (call,) = parse_tool_calls(text, fmt)
        assert call.error, (fmt, text)
    with pytest.raises(ValueError, match="format"):
        parse_tool_calls("x", "nope")


def test_detect_format():
    assert detect_format(None) == "rlvr"
    assert detect_format("{{ messages }}") == "rlvr"
    assert detect_format("{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert detect_format("{% if tools %}[TOOL_CALLS]{% endif %}") == "mistral"
    assert detect_format("{% if tools %}ipython{% endif %}") == "llama3"


def test_run_tool_failures_are_results():
    def boom(x: int) -> int:
        """Fail.

        Args:
            x: anything
        """
        raise RuntimeError("nope")

    def slow(x: int) -> int:
        """Sleep.

        Args:
            x: seconds
        """
        time.sleep(x)
        return x

    tools = {"boom": boom, "slow": slow, "calculator": calculator}
    assert run_tool(ToolCall("calculator", {"expression": "123 * 456"}), tools, 1).content == "56088"
    assert run_tool(ToolCall("boom", {"x": 1}), tools, 1).content == "error: RuntimeError: nope"
    r = run_tool(ToolCall("slow", {"x": 5}), tools, 0.1)
    assert r.error and "timed out" in r.content and r.seconds < 1
    assert run_tool(ToolCall(raw="{", error="bad"), tools, 1).content == "error: bad"


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "(lambda: 1)()",
        "9**9**9",
        "10**40",
        "open('x')",
        "[1] * 10**9",
        "1e400*1e400",
        "a * b",
        "1" * 300,
    ],
)
def test_calculator_refuses_what_is_not_arithmetic(expr):
    with pytest.raises(Exception):
        calculator(expr)


def test_calculator_arithmetic():
    assert calculator("123 * 456") == "56088"
    assert calculator("(2 + 3) * -4") == "-20"
    assert calculator("7 / 2") == "3.5"


def episode(msgs, stop="env_done", infos=None, state=None, turns=None):
    return {
        "messages": msgs,
        "stop": stop,
        "infos": infos or [],
        "state": state or {},
        "turns": turns if turns is not None else sum(m["role"] == "assistant" for m in msgs),
        "truncated": False,
    }


def test_calculator_correct_is_about_the_final_answer():
    reward = rlvr.create("reward", "calculator_correct")
    u = {"role": "user", "content": "What is 123 * 456?"}
    tool = {"role": "tool", "content": "56088"}
    eps = [
        episode(
            [
                u,
                {"role": "assistant", "content": "<tool_call>...</tool_call>"},
                tool,
                {"role": "assistant", "content": "123 * 456 = 56088"},
            ]
        ),
        episode([u, {"role": "assistant", "content": "56088 or 56089"}]),  # hedging: the last number counts
        episode([u, {"role": "assistant", "content": "56088"}], stop="max_turns"),  # cut by a limit: no answer
        episode([u, {"role": "assistant", "content": "56088"}], stop="max_new_tokens"),
        episode([u, tool]),  # no assistant message at all
        episode([u, {"role": "assistant", "content": "fifty-six thousand"}]),
    ]
    assert reward([""] * 6, episode=eps, answer=[56088] * 6) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="env=calculator"):
        reward(["56088"], answer=[56088])


def test_tool_use_partial_credit():
    ok = {"tool_calls": 1, "tool_errors": 0, "calls": [{"name": "calculator", "error": None}]}
    bad = {"tool_calls": 1, "tool_errors": 1, "calls": [{"name": "rm", "error": None}]}
    says = [{"role": "assistant", "content": "<tool_call> I would call it"}]
    assert tool_use_score(episode([], infos=[ok])) == 1.0
    assert tool_use_score(episode([], infos=[bad])) == 0.5
    assert tool_use_score(episode(says, infos=[{"tool_calls": 0}])) == 0.2
    assert tool_use_score(episode([{"role": "assistant", "content": "calculator!"}])) == 0.0


def test_guess_env_and_rewards():
    env = rlvr.create("env", "guess", max_turns=4)
    msgs, state = env.reset({"question": "q", "answer": 7, "low": 1, "high": 20})
    assert msgs[0]["content"] == "q"
    assert env.step(state, "I guess 10")[0][0]["content"] == "Lower."
    assert env.step(state, "maybe")[0][0]["content"] == "Answer with a single number."
    assert env.step(state, "3")[0][0]["content"] == "Higher."
    new, done, info = env.step(state, "It is 7")
    assert done and new == [] and state["solved"]
    solved = rlvr.create("reward", "guess_solved")
    fast = episode([], state={"solved": True, "max_turns": 4}, turns=1)
    slow = episode([], state={"solved": True, "max_turns": 4}, turns=4)
    forged = episode([{"role": "assistant", "content": "7"}], state={"solved": False, "max_turns": 4}, turns=1)
    cut = episode([], state={"solved": True, "max_turns": 4}, turns=1, stop="max_turns")
    assert solved([""] * 4, episode=[fast, slow, forged, cut]) == [1.75, 1.0, 0.0, 0.0]
    valid = rlvr.create("reward", "guess_valid")
    assert valid([""], episode=[episode([], infos=[{"valid": True}, {"valid": False}])]) == [0.5]


def test_multiply3_rows_are_seeded_and_held_out():
    a, b = rlvr.create("task", "multiply3"), rlvr.create("task", "multiply3")
    assert a.train_rows == b.train_rows and len(a.eval_rows) == 100
    held = {(r["a"], r["b"]) for r in a.eval_rows}
    assert not any((r["a"], r["b"]) in held for r in a.train_rows)
    assert all(100 <= r["a"] <= 999 and r["answer"] == r["a"] * r["b"] for r in a.train_rows)
