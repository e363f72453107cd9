"""``task=verifiers task.id=<taskset> env=verifiers reward=[verifiers_reward]``: train on a verifiers environment.

`verifiers <https://pypi.org/project/verifiers/>`_ (0.4, its ``verifiers.v1`` API; prime-rl's environment format)
packages an environment as a *taskset* (``load()`` yields tasks: a prompt and task data; ``@vf.reward`` methods
score a finished trace) and optionally an ``Env`` whose ``run(task, agents)`` plays the user: it opens
``agents.<role>.interaction(task)`` and sends one user turn at a time (``await interaction.turn(text)``), reading
the model's reply from the returned segment, and records rewards on ``interaction.trace``. A plain taskset uses
``SingleAgentEnv``: one reply to the task's prompt.

In verifiers the env drives the model (through an OpenAI-compatible client and a harness program); in rlvr the
trainer drives the env (``reset`` / ``step``). This adapter inverts the control without threads: each episode's
``run()`` is a coroutine on the adapter's own event loop, and the agent it talks to is a stand-in whose
``turn(text)`` hands ``text`` to rlvr as the next user message and waits for the assistant's reply:

* ``reset(row)``: the task rebuilt from the row (``task=verifiers`` rows carry the taskset id, its arguments and
  the task's data), ``run()`` started and run until it waits for the first reply; the first messages are the
  task's system prompt and prompt plus the env's first user turn, if it sent one.
* ``step(state, text)``: the reply is handed to ``run()``, which goes on until it waits for the next reply (its
  user turn is returned) or returns (``done``). At ``env.max_turns`` the next ``turn()`` gets a *terminated*
  segment, as a verifiers turn limit does, so ``run()`` finishes and records its rewards; the episode then ends
  with ``stop=max_turns``.
* When ``run()`` has returned, the task's ``@vf.reward`` / ``@vf.metric`` functions score the trace
  (``task.score(trace)``, with no runtime: runtime-dependent signals are skipped, as verifiers does offline),
  then ``env.finalize``. The weighted reward (``trace.reward``: the sum of score × weight over every recorded
  reward) and each named reward are written to the episode's state, which only the adapter writes.
* ``verifiers_reward`` reads that score: 0 for an episode whose ``run()`` did not finish (an rlvr token limit cut
  it before the env saw the end) or raised.

Not supported (a ConfigError says so at start-up): tools (MCP toolsets on the task or taskset), tasks that need a
container or a runtime (``NEEDS_CONTAINER``, sandboxes, harness programs such as ``bash``), envs with more than one
agent role, judges that call a model (they are skipped like other runtime-dependent signals only when they
declare a ``runtime`` parameter; a judge that calls an API would try the network).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import uuid
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.environment import EnvConfig, validate_env_config
from rlvr.core.errors import ConfigError
from rlvr.core.rewards import RewardConfig
from rlvr.core.task import Task, TaskConfig

INSTALL_HINT = "pip install 'rlvr[envs]' (or pip install 'verifiers>=0.4')"
MAX_ERROR_CHARS = 500


def _vf() -> Any:
    """``verifiers.v1``, or a one-line error telling how to install it."""
    try:
        return importlib.import_module("verifiers.v1")
    except ImportError as exc:
        raise ConfigError(
            f"verifiers environments need the verifiers package >= 0.4: {INSTALL_HINT} ({exc})"
        ) from None


class Loaded:
    """One taskset and its Env, loaded once per (taskset id, arguments)."""

    def __init__(self, taskset_id: str, args: dict[str, Any]) -> None:
        vf = _vf()
        from verifiers.v1.configs.agent import agent_config_fields

        try:
            config = vf.resolve_env_config({"taskset": {"id": taskset_id, **args}})
            env_cls = vf.environment_class(taskset_id)
            self.env = env_cls(config)
        except (ModuleNotFoundError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(f"verifiers taskset {taskset_id!r} (args {args}): {exc}") from None
        self.taskset = self.env.taskset
        self.task_cls = type(self.taskset).task_type()
        roles = list(agent_config_fields(config))
        if len(roles) != 1:
            raise ConfigError(
                f"verifiers taskset {taskset_id!r}: its env {env_cls.__name__} has agent roles {roles}; "
                "only single-agent envs are supported"
            )
        self.role = roles[0]
        if self.task_cls.NEEDS_CONTAINER:
            raise ConfigError(f"verifiers taskset {taskset_id!r} needs a container runtime, which rlvr does not run")
        if self.taskset.toolsets(self.taskset.config) or self.task_cls.toolsets(self.taskset.config.task):
            raise ConfigError(
                f"verifiers taskset {taskset_id!r} gives the model tools (MCP toolsets): not supported yet"
            )

    def task(self, data: dict[str, Any]) -> Any:
        return self.task_cls(self.task_cls.data_type().model_validate(data), self.taskset.config.task)


_LOADED: dict[str, Loaded] = {}


def load(taskset_id: str, args: dict[str, Any]) -> Loaded:
    key = json.dumps([taskset_id, args], sort_keys=True, default=str)
    if key not in _LOADED:
        _LOADED[key] = Loaded(taskset_id, args)
    return _LOADED[key]


def _text(content: Any) -> str:
    from verifiers.v1.types import content_text

    return content if isinstance(content, str) else content_text(content)


def _wire(message: Any) -> dict[str, Any]:
    """A verifiers message (typed or a dict) as an rlvr chat message (role, text content)."""
    if isinstance(message, dict):
        return {"role": str(message.get("role", "user")), "content": _text(message.get("content") or "")}
    return {"role": str(message.role), "content": _text(getattr(message, "content", "") or "")}


class Bridge:
    """Stands in for the verifiers ``Agent`` and ``Interaction`` of one episode (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: Any, trace: Any) -> None:
        self.loop, self.task, self.trace = loop, task, trace
        self.trainable = True  # Env.setup may set it (a verifiers Agent attribute)
        self.asked: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
        self.reply: asyncio.Future[str] | None = None
        self.stop_next = False  # rlvr reached max_turns: the next turn() is terminated
        self.cut = False  # run() ended because of stop_next
        self.started = self.over = False
        self.result: dict[str, Any] = {}  # what run() and scoring gave, copied into the episode's state at the end

    def _add(self, message: Any, sampled: bool = False) -> None:
        from verifiers.v1.graph import MessageNode

        parent = len(self.trace.nodes) - 1 if self.trace.nodes else None
        self.trace.nodes.append(MessageNode(parent=parent, message=message, sampled=sampled))

    # -- Agent ------------------------------------------------------------------------------------
    @asynccontextmanager
    async def interaction(self, task: Any, **kw: Any) -> AsyncIterator[Bridge]:
        if kw.get("runtime") is not None or kw.get("tools"):
            raise RuntimeError("runtimes and tools are not supported by rlvr's verifiers adapter")
        yield self
        self.trace.stop("user_closed")

    async def run(self, task: Any, **kw: Any) -> Any:
        """``Agent.run``: one segment on the task's prompt (a tool-less single reply)."""
        async with self.interaction(task, **kw) as it:
            await it.turn()
        self.trace.stop("agent_completed", override=True)
        return self.trace

    # -- Interaction -----------------------------------------------------------------------------
    async def turn(self, message: Any = None) -> Any:
        from verifiers.v1.agent import Segment
        from verifiers.v1.types import AssistantMessage, UserMessage

        if self.over:
            raise RuntimeError("the exchange is over (the run ended); read interaction.trace")
        prompted = not self.started and self.task.data.prompt is not None
        if message is None and not prompted:
            raise ValueError("nothing to run a turn on: a bare turn() takes a prompted task's opening reply")
        if message is not None and prompted:
            raise ValueError("the task's prompt opens this exchange: take its first reply with a bare turn()")
        self.started = True
        if self.stop_next:
            self.over = self.cut = True
            self.trace.stop("max_turns")
            return Segment(messages=[], terminated=True)
        new = [] if message is None else [UserMessage(content=message)] if isinstance(message, str) else list(message)
        from verifiers.v1.dialects.chat import parse_message

        new = [parse_message(m) if isinstance(m, dict) else m for m in new]
        for m in new:
            self._add(m)
        self.reply = self.loop.create_future()
        self.asked.set_result([_wire(m) for m in new])
        text = await self.reply
        reply = AssistantMessage(content=text)
        self._add(reply, sampled=True)
        return Segment(messages=[reply])


class _Agents:
    def __init__(self, role: str, bridge: Bridge) -> None:
        self._role, self._bridge = role, bridge

    def __getattr__(self, name: str) -> Bridge:
        if name == self.__dict__.get("_role"):
            return self.__dict__["_bridge"]
        raise AttributeError(f"no agent {name!r}; this env has {self.__dict__.get('_role')!r}")


class EpisodeState(dict):  # type: ignore[type-arg]
    """The JSON state rewards read (weak-referenceable: a dropped unfinished episode's run() is cancelled)."""


@dataclass
class VerifiersEnvConfig(EnvConfig):
    id: str = ""  # the taskset id; "" = the one named by each row (task=verifiers puts it there)
    args: Dict[str, Any] = field(default_factory=dict)  # taskset config fields, with env.id
    max_turns: int = 6
    max_tokens: int = 512


def _shutdown(loop: asyncio.AbstractEventLoop, live: dict[str, Any]) -> None:
    """Cancel the run() of every unfinished episode and close the loop."""
    tasks = [run for _, run, _ in live.values() if not run.done()]
    live.clear()
    if loop.is_closed() or loop.is_running():
        return
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


class VerifiersAdapter:
    """A verifiers v1 taskset + Env as an rlvr env (no tools; the assistant's message is its reply)."""

    def __init__(self, cfg: VerifiersEnvConfig) -> None:
        validate_env_config(cfg)
        _vf()
        self.cfg = cfg
        self.tools: list[Any] = []
        if cfg.id:
            load(cfg.id, dict(cfg.args))  # fail at start-up on a bad id
        self.loop = asyncio.new_event_loop()
        self._live: dict[str, tuple[Bridge, asyncio.Task[None], Loaded]] = {}
        self._dropped: list[str] = []
        weakref.finalize(self, _shutdown, self.loop, self._live)  # also at exit: no "Task was destroyed" noise

    # -- episode plumbing --------------------------------------------------------------------------
    def _drop(self, uid: str) -> None:  # weakref callback: never runs the loop itself
        self._dropped.append(uid)

    def _sweep(self) -> None:
        """Cancel the run() of episodes rlvr dropped unfinished (a token limit cut them)."""
        tasks = []
        while self._dropped:
            entry = self._live.pop(self._dropped.pop(), None)
            if entry is not None and not entry[1].done():
                entry[1].cancel()
                tasks.append(entry[1])
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def _pump(self, bridge: Bridge, run: asyncio.Task[None]) -> list[dict[str, Any]] | None:
        """Run the loop until ``run()`` waits for a reply (its new user messages) or has returned (None)."""
        self.loop.run_until_complete(asyncio.wait([run, bridge.asked], return_when=asyncio.FIRST_COMPLETED))
        return None if run.done() else bridge.asked.result()

    async def _episode(self, loaded: Loaded, task: Any, bridge: Bridge) -> None:
        """run() then scoring; the outcome goes to ``bridge.result`` (not the state: a pending coroutine holding the
        state would keep it alive, and a dropped episode would never be released)."""
        from verifiers.v1.episode import EnvInfo, Episode
        from verifiers.v1.trace import TraceTask

        vf = _vf()
        try:
            await loaded.env.setup(_Agents(loaded.role, bridge))
            await loaded.env.run(task, _Agents(loaded.role, bridge))
            await task.score(bridge.trace)
            if type(loaded.env).finalize is not vf.Env.finalize:
                info = TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash)
                episode = Episode(env=EnvInfo(id=loaded.env.config.env_id), task=info, traces=[bridge.trace])
                await loaded.env.finalize(task, episode)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the env failed on this episode: recorded, scored 0, the run goes on
            bridge.result["error"] = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            return
        trace = bridge.trace
        rewards = {k: {"score": r.score, "weight": r.weight} for k, r in trace.rewards.items() if r is not None}
        total = float(trace.reward)
        if not math.isfinite(total):
            bridge.result["error"] = f"the trace's reward is {total}"
            return
        bridge.result.update(
            finished=True,
            rewards=rewards,
            reward=total,
            metrics={k: v for k, v in trace.metrics.items() if v is not None},
            stop_condition=trace.stop_condition,
            info=json.loads(json.dumps(trace.info, default=str)),
        )

    # -- rlvr Env ------------------------------------------------------------------------------------
    def reset(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], EpisodeState]:
        from verifiers.v1.configs.agent import AgentConfig
        from verifiers.v1.trace import AgentInfo, Trace, TraceTask
        from verifiers.v1.types import SystemMessage, UserMessage

        self._sweep()
        taskset_id = self.cfg.id or row.get("vf_taskset")
        if not taskset_id or "vf_task" not in row:
            raise ConfigError("env=verifiers needs task=verifiers rows (vf_taskset, vf_task columns)")
        loaded = load(str(taskset_id), dict(self.cfg.args) if self.cfg.id else dict(row.get("vf_args") or {}))
        task = loaded.task(row["vf_task"])
        trace = Trace(
            task=TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash),
            agent=AgentInfo(config=AgentConfig(), name=loaded.role),
        )
        bridge = Bridge(self.loop, task, trace)
        first: list[Any] = []
        if task.data.system_prompt:
            first.append(SystemMessage(content=task.data.system_prompt))
        prompt = task.data.prompt
        if isinstance(prompt, str):
            first.append(UserMessage(content=prompt))
        elif prompt:
            first.extend(prompt)
        for m in first:
            bridge._add(m)
        uid = uuid.uuid4().hex
        state = EpisodeState(adapter="verifiers", id=uid, taskset=str(taskset_id), turns=0, finished=False, reward=0.0)
        run = self.loop.create_task(self._episode(loaded, task, bridge))
        self._live[uid] = (bridge, run, loaded)
        weakref.finalize(state, self._drop, uid)
        asked = self._pump(bridge, run)
        if asked is None:
            raise ConfigError(
                f"verifiers taskset {taskset_id!r}: the env's run() ended before the model's first turn "
                f"({bridge.result.get('error') or 'no turn was asked'})"
            )
        return [_wire(m) for m in first] + asked, state

    def step(self, state: EpisodeState, message: str) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        self._sweep()
        entry = self._live.get(state["id"])
        if entry is None or state["finished"] or state.get("error"):
            raise RuntimeError("VerifiersAdapter.step on an episode that already ended (or another adapter's state)")
        bridge, run, _ = entry
        state["turns"] += 1
        bridge.stop_next = state["turns"] >= self.cfg.max_turns
        bridge.asked = self.loop.create_future()
        assert bridge.reply is not None
        bridge.reply.set_result(message)
        asked = self._pump(bridge, run)
        if asked is not None:
            return asked, False, {}
        self._live.pop(state["id"], None)
        state.update(bridge.result)
        info = {"error": state["error"]} if state.get("error") else {}
        return [], not bridge.cut, info  # cut by max_turns: rlvr ends it as max_turns (truncated)


def verifiers_reward_fn(cfg: RewardConfig) -> Any:
    def verifiers_reward(completions: list[str], episode: list[Any] | None = None, **kw: Any) -> list[float | None]:
        """The verifiers trace's weighted reward (0 when the env's run() did not finish or failed)."""
        if episode is None:
            raise ValueError("verifiers_reward scores multi-turn episodes: use it with env=verifiers")
        out: list[float | None] = []
        for ep in episode:
            state = ep.get("state") if isinstance(ep, dict) else None
            if not isinstance(state, dict) or state.get("adapter") != "verifiers":
                raise ValueError("verifiers_reward scores env=verifiers episodes (the adapter's state)")
            ok = state.get("finished") is True and not state.get("error")
            out.append(float(state["reward"]) if ok else 0.0)
        return out

    return verifiers_reward


@dataclass
class VerifiersTaskConfig(TaskConfig):
    id: str = ""  # the taskset id (an installed verifiers environment package, e.g. vf-hotcold)
    args: Dict[str, Any] = field(default_factory=dict)  # taskset config fields (+task.args.<field>=...)
    train_size: int = 0  # training tasks: the first train_size (0 = every task but the held-out ones)
    eval_size: int = 10  # held-out tasks: the eval_size after the training ones (the last ones when train_size=0)
    answer_column: str = "vf_key"
    prompt_template: str = "{question}"
    system_prompt: Optional[str] = None


def load_verifiers_task(cfg: VerifiersTaskConfig) -> Task:
    """The taskset's tasks as rows: ``vf_taskset`` / ``vf_args`` (which taskset), ``vf_task`` (the task's data),
    ``vf_key`` (its key) and ``question`` (its prompt text)."""
    if not cfg.id:
        raise ConfigError("task=verifiers needs task.id: an installed verifiers taskset (e.g. task.id=vf-hotcold)")
    loaded = load(cfg.id, dict(cfg.args))
    taskset = loaded.taskset
    if cfg.train_size <= 0 and not taskset.bounded:
        raise ConfigError(f"task=verifiers: taskset {cfg.id!r} is infinite; set task.train_size")
    tasks = taskset.take(cfg.train_size + cfg.eval_size) if cfg.train_size > 0 else taskset
    rows = [
        {
            "vf_taskset": cfg.id,
            "vf_args": dict(cfg.args),
            "vf_task": t.data.model_dump(mode="json"),
            "vf_key": t.key,
            "question": t.data.prompt_text,
        }
        for t in tasks
    ]
    n_train = cfg.train_size if cfg.train_size > 0 else len(rows) - cfg.eval_size
    if n_train <= 0 or n_train > len(rows):
        raise ConfigError(
            f"task=verifiers: taskset {cfg.id!r} has {len(rows)} tasks, too few for task.train_size={cfg.train_size} "
            f"and task.eval_size={cfg.eval_size}"
        )
    return Task(f"verifiers:{cfg.id}", rows[:n_train], rows[n_train : n_train + cfg.eval_size], cfg)


@hookimpl
def rlvr_envs() -> list[PluginSpec]:
    return [
        PluginSpec("verifiers", VerifiersAdapter, VerifiersEnvConfig, "a verifiers (v1) environment (task=verifiers)")
    ]


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [PluginSpec("verifiers", load_verifiers_task, VerifiersTaskConfig, "a verifiers (v1) taskset's tasks")]


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec("verifiers_reward", verifiers_reward_fn, RewardConfig, "env=verifiers: the trace's weighted reward")
    ]
