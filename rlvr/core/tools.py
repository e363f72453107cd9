"""Tools for multi-turn environments: plain Python functions, their JSON schemas, parsing the model's
tool calls per chat-template family, and running a call with a timeout.

Formats (``env.tool_format``):

* ``rlvr`` — rlvr's own format for chat templates without tool support (SmolLM2's, ChatML): the tools
  are described in the system prompt (:func:`rlvr_tool_prompt`) and the model calls one with
  ``<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>``; the result
  comes back as a message of role ``tool``.
* ``hermes`` — Qwen 2.5 / Qwen 3 / Hermes templates: the same ``<tool_call>`` JSON, tools passed to the
  template's ``tools=``.
* ``llama3`` — Llama 3.1-3.3: the whole assistant message is one JSON object
  ``{"name": ..., "parameters": {...}}`` (optionally after ``<|python_tag|>``), several separated by ``;``.
* ``mistral`` — ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``.

A call that cannot be parsed (bad JSON, no ``name``, arguments not an object, unknown tool, wrong
arguments) becomes a :class:`ToolCall` with ``error`` set; the environment sends the error back to the
model as the tool's result, so a malformed call never stops a run.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("auto", "rlvr", "hermes", "llama3", "mistral")


class ToolError(Exception):
    """Raised by a tool to send ``error: <message>`` back to the model verbatim (without the exception's type
    name that other exceptions get); the call counts as a tool error."""


@dataclass
class ToolCall:
    """One parsed call: ``name`` and ``arguments``, or ``error`` (why it could not be parsed) and ``raw`` text."""

    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    raw: str = ""
    error: str | None = None


@dataclass
class ToolResult:
    """What running one call gave: ``content`` (the text sent back), ``error`` (True when the call failed),
    ``seconds`` spent."""

    name: str
    content: str
    error: bool
    seconds: float


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of a tool function (transformers' ``get_json_schema``: name, docstring description,
    type hints → parameter types, ``Args:`` lines → parameter descriptions).

    Raises a ValueError naming the function when it lacks type hints or a docstring."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(fn)
    except Exception as exc:  # transformers raises its own DocstringParsingException / TypeHintParsingException
        raise ValueError(
            f"tool {getattr(fn, '__name__', fn)!r} cannot become a tool schema: {exc}. A tool needs a "
            "type hint on every argument and a Google-style docstring with an Args: section"
        ) from exc


def example_call(fn: Callable[..., Any]) -> str:
    """A call of ``fn`` in the rlvr format, from ``fn.example`` (a dict of arguments) when it has one, else with
    placeholder values from its schema."""
    schema = tool_schema(fn)["function"]
    args = getattr(fn, "example", None)
    if not isinstance(args, dict):
        args = {k: f"<{k}>" for k in schema.get("parameters", {}).get("properties", {})}
    return "<tool_call>" + json.dumps({"name": schema["name"], "arguments": args}) + "</tool_call>"


def rlvr_tool_prompt(tools: Sequence[Callable[..., Any]]) -> str:
    """The system-prompt text that describes ``tools`` in rlvr's tagged-JSON format (templates without tools):
    one line of JSON schema per tool and an example call of the first."""
    specs = "\n".join(json.dumps(tool_schema(t)["function"]) for t in tools)
    return (
        "You have tools. To call a tool, reply with only a tool call, for example:\n"
        + example_call(tools[0])
        + "\nThe result comes back in the next message. Then reply with the final answer, without a tool "
        "call.\nTools:\n" + specs
    )


def detect_format(chat_template: str | None) -> str:
    """The tool-call format a chat template uses: hermes, llama3, mistral, or rlvr (no tool support)."""
    t = chat_template or ""
    if "tools" not in t:
        return "rlvr"
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if "<tool_call>" in t:
        return "hermes"
    if "<|python_tag|>" in t or "ipython" in t:
        return "llama3"
    return "rlvr"


TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def _from_obj(obj: Any, raw: str, args_key: str) -> ToolCall:
    if not isinstance(obj, dict):
        return ToolCall(raw=raw, error=f"a tool call must be a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    if not isinstance(name, str) or not name:
        return ToolCall(raw=raw, error='the tool call has no "name" string')
    if not isinstance(args, dict):
        return ToolCall(name=name, raw=raw, error=f'"{args_key}" must be a JSON object')
    return ToolCall(name=name, arguments=args, raw=raw)


def _loads(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON in tool call ({exc.msg} at character {exc.pos})"


def parse_tool_calls(text: str, fmt: str) -> list[ToolCall]:
    """The tool calls in an assistant message (``fmt``: rlvr, hermes, llama3, mistral); [] when it has none.

    Malformed calls come back with ``error`` set, never raise."""
    if fmt in ("rlvr", "hermes"):
        calls = []
        for m in TAGGED.finditer(text):
            raw = m.group(1).strip()
            obj, err = _loads(raw)
            calls.append(ToolCall(raw=raw, error=err) if err else _from_obj(obj, raw, "arguments"))
        return calls
    if fmt == "mistral":
        if "[TOOL_CALLS]" not in text:
            return []
        raw = text.split("[TOOL_CALLS]", 1)[1].strip()
        obj, err = _loads(raw)
        if err:
            return [ToolCall(raw=raw, error=err)]
        return [_from_obj(o, raw, "arguments") for o in (obj if isinstance(obj, list) else [obj])]
    if fmt == "llama3":
        body = text.replace("<|python_tag|>", "").strip()
        if not body.startswith("{"):
            return []
        out = []
        for part in body.split(";"):
            obj, err = _loads(part.strip())
            out.append(ToolCall(raw=part, error=err) if err else _from_obj(obj, part, "parameters"))
        return out
    raise ValueError(f"unknown tool-call format {fmt!r}; choose one of {', '.join(FORMATS[1:])}")


def run_tool(call: ToolCall, tools: dict[str, Callable[..., Any]], timeout: float) -> ToolResult:
    """Run one parsed call; every failure (parse error, unknown tool, bad arguments, exception, timeout) becomes
    an error result whose content tells the model what went wrong.

    The tool runs in a daemon thread; after ``timeout`` seconds the episode goes on with a timeout error and
    the thread is abandoned (Python cannot kill a thread: a tool that must be stopped should run in a
    subprocess, as the code_exec sandbox does)."""
    t0 = time.perf_counter()
    if call.error:
        return ToolResult(call.name, f"error: {call.error}", True, time.perf_counter() - t0)
    fn = tools.get(call.name)
    if fn is None:
        return ToolResult(
            call.name,
            f"error: unknown tool {call.name!r}; tools: {', '.join(sorted(tools))}",
            True,
            time.perf_counter() - t0,
        )
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(**call.arguments)
        except ToolError as exc:
            box["error"] = str(exc)
        except TypeError as exc:
            box["error"] = f"bad arguments for {call.name}: {exc}"
        except Exception as exc:  # the tool's own failure is the model's feedback
            box["error"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=target, daemon=True, name=f"rlvr-tool-{call.name}")
    worker.start()
    worker.join(timeout)
    seconds = time.perf_counter() - t0
    if worker.is_alive():
        return ToolResult(call.name, f"error: tool {call.name!r} timed out after {timeout:g} s", True, seconds)
    if "error" in box:
        return ToolResult(call.name, f"error: {box['error']}", True, seconds)
    value = box.get("value")
    return ToolResult(call.name, value if isinstance(value, str) else json.dumps(value), False, seconds)
