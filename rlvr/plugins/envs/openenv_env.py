"""``env=openenv env.id=<package>``: run an OpenEnv environment (``openenv-core``) as an rlvr environment.

An OpenEnv environment is a class with ``reset(seed=..., **kw) -> Observation`` and ``step(Action) -> Observation``
(``openenv.core.env_server.interfaces.Environment``; ``Action`` / ``Observation`` are pydantic models; an
observation carries ``done`` and ``reward``). This adapter runs the environment *in process* (the server-side
class, no HTTP server, no Docker) and maps it onto rlvr's ``reset(row) / step(state, text)``:

* ``reset(row)``: a fresh environment instance, ``reset(seed=row[seed], **row["reset_kwargs"])``; the first
  messages are a system prompt describing the action (from the Action model's JSON schema, or ``env.system_prompt``)
  and the observation as a user message.
* ``step(state, text)``: the assistant's text is parsed into the Action model: a JSON object (optionally in a
  ```json fence), or, for an Action with exactly one required field, the bare text as that field. The environment
  steps; the next observation is the next user message; ``observation.done`` ends the episode. A reply that is
  not a valid action (bad JSON, unknown or missing fields, a field of the wrong type, ``metadata`` set by the
  model) or that the environment raises on comes back as a user message ``error: ...``; the environment is not
  stepped, the turn counts, the run goes on.
* Rewards: ``openenv_reward`` = the sum of the rewards the environment returned on its steps (as
  verifiers' OpenEnv taskset sums them), or with ``per_turn=true`` each turn's own (rlvr's per-turn rewards: the
  tokens of a turn are credited with the rewards from that turn on); ``openenv_valid`` = the fraction of turns whose action the environment
  accepted. Both read the episode's ``state``, which only the adapter writes (the model's text is never parsed
  for a score).

Observations become text with ``env.observation_key`` (one field, e.g. ``prompt``), or, when it is empty, one
``name: value`` line per field of the observation (``done`` / ``reward`` / ``metadata`` left out).

``task=openenv`` gives the rows: ``{"seed": i}`` for seeded resets (the environment must be deterministic for a
seed: the G episodes of a group share the first prompt, rendered once).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import math
import re
import typing
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from rlvr import PluginSpec, hookimpl
from rlvr.core.environment import EnvConfig, validate_env_config
from rlvr.core.errors import ConfigError
from rlvr.core.rewards import RewardConfig
from rlvr.core.task import Task, TaskConfig

INSTALL_HINT = "pip install 'rlvr[envs]' (or pip install openenv-core)"
BASE_OBSERVATION_FIELDS = ("done", "reward", "metadata")
MAX_ERROR_CHARS = 300


def _openenv() -> Any:
    """The ``openenv.core`` module, or a one-line error telling how to install it."""
    try:
        return importlib.import_module("openenv.core.env_server.interfaces")
    except ImportError as exc:
        raise ConfigError(f"env=openenv needs the openenv-core package: {INSTALL_HINT} ({exc})") from None


def _import(path: str) -> Any:
    """``pkg.module:Name`` → the object; ``pkg`` → the module."""
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def resolve_environment(env_id: str) -> type:
    """The OpenEnv ``Environment`` subclass ``env_id`` names.

    ``env_id`` is ``pkg.module:ClassName``, or an installed environment package laid out as ``openenv init``
    makes it (``<pkg>.server`` exports exactly one ``Environment`` subclass), or a module exporting one."""
    base = _openenv().Environment
    if not env_id:
        raise ConfigError(
            "env=openenv needs env.id: an installed OpenEnv package (e.g. env.id=wordle_env) or pkg.module:Class"
        )
    try:
        if ":" in env_id:
            cls = _import(env_id)
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise ConfigError(f"env.id={env_id!r} is {cls!r}, not an OpenEnv Environment subclass")
            return cls
        modules = []
        for name in (f"{env_id}.server", env_id):
            try:
                modules.append(importlib.import_module(name))
            except ModuleNotFoundError as exc:
                if exc.name is None or not name.startswith(exc.name):
                    raise  # the module exists but one of its own imports is missing
    except ModuleNotFoundError as exc:
        raise ConfigError(f"env.id={env_id!r}: cannot import it ({exc}); install the environment's package") from None
    except AttributeError as exc:
        raise ConfigError(f"env.id={env_id!r}: {exc}") from None
    if not modules:
        raise ConfigError(f"env.id={env_id!r}: no module of that name; install the environment's package")
    for mod in modules:
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        found = {
            getattr(mod, n)
            for n in names
            if isinstance(getattr(mod, n, None), type)
            and issubclass(getattr(mod, n), base)
            and getattr(mod, n) is not base
        }
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            raise ConfigError(
                f"env.id={env_id!r}: {mod.__name__} exports several Environment classes "
                f"({sorted(c.__name__ for c in found)}); name one as env.id={mod.__name__}:ClassName"
            )
    raise ConfigError(
        f"env.id={env_id!r}: no OpenEnv Environment subclass found in {env_id}.server or {env_id}; "
        f"name it as env.id=pkg.module:ClassName"
    )


def action_class(env_cls: type, override: str = "") -> type:
    """The pydantic Action model ``env_cls.step`` takes: ``override`` (``pkg.module:Class``), else the type hint of
    ``step``'s first argument, else the ``Environment[Action, ...]`` generic argument."""
    base = importlib.import_module("openenv.core.env_server.types").Action
    if override:
        cls = _import(override)
    else:
        cls = None
        try:
            hints = typing.get_type_hints(env_cls.step)
            params = [p for p in inspect.signature(env_cls.step).parameters if p != "self"]
            cls = hints.get(params[0]) if params else None
        except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the generic argument
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, base)):
            for orig in getattr(env_cls, "__orig_bases__", ()):
                args = [a for a in typing.get_args(orig) if isinstance(a, type) and issubclass(a, base)]
                if args:
                    cls = args[0]
                    break
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(
            f"cannot tell which Action model {env_cls.__name__}.step takes (no type hint); set env.action=pkg.module:Class"
        )
    return cls


@functools.lru_cache(maxsize=64)
def action_fields(cls: type) -> tuple[dict[str, Any], list[str]]:
    """(JSON-schema properties, required names) of an Action model, without the trainer's ``metadata`` field."""
    schema = cls.model_json_schema()  # type: ignore[attr-defined]
    props = {k: v for k, v in schema.get("properties", {}).items() if k != "metadata"}
    return props, [r for r in schema.get("required", []) if r != "metadata"]


def action_prompt(cls: type) -> str:
    """A system prompt telling the model how to write an action of model ``cls``."""
    props, required = action_fields(cls)
    lines = [
        f"- {k} ({v.get('type', 'any')}{', required' if k in required else ''}): {v.get('description', '')}".rstrip(
            ": "
        )
        for k, v in props.items()
    ]
    example = json.dumps({k: f"<{k}>" for k in required})
    text = "Each turn, reply with one action: a JSON object " + example + " with the fields\n" + "\n".join(lines)
    if len(required) == 1:
        text += f"\nor just the {required[0]} itself, with nothing else."
    return text


class ActionError(ValueError):
    """The assistant's text is not a valid action; the message says why (sent back to the model)."""


_FENCE = re.compile(r"^```[a-zA-Z]*\n(.*)\n```$", re.S)


def parse_action(text: str, cls: type) -> Any:
    """The assistant's ``text`` as an instance of the Action model ``cls`` (see the module docstring).

    Raises:
        ActionError: with a short reason the model can act on."""
    from pydantic import ValidationError

    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        obj = None
    _, required = action_fields(cls)
    if isinstance(obj, dict):
        data = obj
    elif len(required) == 1:
        data = {required[0]: obj if isinstance(obj, str) else body}
    else:
        raise ActionError(f"reply with a JSON object with the fields {required}")
    if "metadata" in data:
        raise ActionError("'metadata' is not an action field")
    try:
        return cls.model_validate(data)  # type: ignore[attr-defined]
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'action'}: {e['msg']}" for e in exc.errors())
        raise ActionError(f"invalid action: {why}") from None


def observation_text(obs: Any, key: str = "") -> str:
    """An observation as the text of a user message: field ``key`` when given, else ``name: value`` lines."""
    data = obs.model_dump() if hasattr(obs, "model_dump") else dict(obs)
    if key:
        if key not in data:
            raise ConfigError(f"env.observation_key={key!r}: the observation has no such field ({sorted(data)})")
        value = data[key]
        return value if isinstance(value, str) else json.dumps(value, default=str)
    parts = []
    for name, value in data.items():
        if name in BASE_OBSERVATION_FIELDS:
            continue
        parts.append(f"{name}: {value if isinstance(value, str) else json.dumps(value, default=str)}")
    return "\n".join(parts)


def row_seed(row: dict[str, Any], column: str) -> int:
    """The reset seed of a row: ``row[column]``, else a stable hash of the row (so every episode of a group, and a
    resumed run, resets the same way)."""
    if column in row and row[column] is not None:
        return int(row[column])
    digest = hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class EpisodeState(dict):  # type: ignore[type-arg]
    """The JSON episode state rewards read (a dict subclass only to be weak-referenceable: when rlvr drops the
    episode, its live environment instance is closed)."""


@dataclass
class OpenEnvConfig(EnvConfig):
    id: str = ""  # an installed OpenEnv environment package (its .server exports the Environment) or pkg.module:Class
    args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the Environment's constructor
    action: str = ""  # pkg.module:ActionClass when step() has no type hint
    observation_key: str = ""  # the observation field shown to the model ("" = every field, one per line)
    system_prompt: Optional[str] = None  # None = describe the action from its JSON schema
    seed_column: str = "seed"  # the row column passed as reset(seed=...)
    max_turns: int = 6
    max_tokens: int = 256


class OpenEnvAdapter:
    """An OpenEnv ``Environment`` class as an rlvr env (no tools: the assistant's message is the action)."""

    def __init__(self, cfg: OpenEnvConfig) -> None:
        validate_env_config(cfg)
        self.cfg = cfg
        self.tools: list[Any] = []
        self.env_cls = resolve_environment(cfg.id)
        self.action_cls = action_class(self.env_cls, cfg.action)
        self.system_prompt = cfg.system_prompt if cfg.system_prompt is not None else action_prompt(self.action_cls)
        self._live: dict[str, Any] = {}  # episode id -> its Environment instance, until the episode ends

    def _release(self, uid: str) -> None:
        env = self._live.pop(uid, None)
        if env is not None:
            env.close()

    def reset(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], EpisodeState]:
        env = self.env_cls(**dict(self.cfg.args))
        kwargs = dict(row.get("reset_kwargs") or {})
        obs = env.reset(seed=row_seed(row, self.cfg.seed_column), **kwargs)
        uid = uuid.uuid4().hex
        self._live[uid] = env
        state = EpisodeState(
            adapter="openenv", id=uid, rewards=[], turn_rewards=[], reward=0.0, turns=0, valid=0, done=bool(obs.done)
        )
        weakref.finalize(state, self._release, uid)
        messages = [{"role": "user", "content": observation_text(obs, self.cfg.observation_key)}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages, state

    def step(self, state: EpisodeState, message: str) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        env = self._live.get(state["id"])
        if env is None or state["done"]:
            raise RuntimeError("OpenEnvAdapter.step on an episode that already ended (or another adapter's state)")
        state["turns"] += 1
        state["turn_rewards"].append(0.0)  # this turn's env reward (0 when the action is refused)
        try:
            obs = env.step(parse_action(message, self.action_cls))
        except ActionError as exc:
            return [{"role": "user", "content": f"error: {exc}"}], False, {"valid": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the environment refused the action: the model is told, the run goes on
            why = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            return (
                [{"role": "user", "content": f"error: the environment refused the action: {why}"}],
                False,
                {
                    "valid": False,
                    "error": why,
                },
            )
        reward = 0.0 if obs.reward is None else float(obs.reward)
        if not math.isfinite(reward):
            raise ValueError(f"{self.env_cls.__name__}.step returned reward={obs.reward!r}; rewards must be finite")
        state["valid"] += 1
        state["rewards"].append(reward)
        state["turn_rewards"][-1] = reward
        state["reward"] = float(sum(state["rewards"]))
        info = {"valid": True, "reward": reward}
        if obs.done:
            state["done"] = True
            self._release(state["id"])
            return [], True, info
        return [{"role": "user", "content": observation_text(obs, self.cfg.observation_key)}], False, info


def _adapter_state(ep: Any, reward: str) -> dict[str, Any]:
    state = ep.get("state") if isinstance(ep, dict) else None
    if not isinstance(state, dict) or state.get("adapter") != "openenv":
        raise ValueError(f"{reward} scores env=openenv episodes (the 'episode' column with the adapter's state)")
    return state


@dataclass
class OpenEnvRewardConfig(RewardConfig):
    per_turn: bool = False  # one score per assistant turn (the env's reward for that turn's action) instead of the sum


def openenv_reward_fn(cfg: OpenEnvRewardConfig) -> Any:
    def openenv_reward(completions: list[str], episode: list[Any] | None = None, **kw: Any) -> list[Any]:
        """The sum of the rewards the environment returned on the episode's steps; with ``per_turn``, the list of
        them per assistant turn (0 for a refused action and for a turn a limit cut, which the env never saw)."""
        if episode is None:
            raise ValueError("openenv_reward scores multi-turn episodes: use it with env=openenv")
        out: list[Any] = []
        for ep in episode:
            state = _adapter_state(ep, "openenv_reward")
            if cfg.per_turn:
                turns = int(ep.get("turns", 0))
                per = [float(r) for r in state["turn_rewards"]][:turns]
                out.append(per + [0.0] * (turns - len(per)))
            else:
                out.append(float(sum(float(r) for r in state["rewards"])))
        return out

    return openenv_reward


def openenv_valid_fn(cfg: RewardConfig) -> Any:
    def openenv_valid(completions: list[str], episode: list[Any] | None = None, **kw: Any) -> list[float | None]:
        """The fraction of the episode's turns whose action the environment accepted (0 when no turn was seen)."""
        if episode is None:
            raise ValueError("openenv_valid scores multi-turn episodes: use it with env=openenv")
        out: list[float | None] = []
        for ep in episode:
            state = _adapter_state(ep, "openenv_valid")
            out.append(state["valid"] / state["turns"] if state["turns"] else 0.0)
        return out

    return openenv_valid


@dataclass
class OpenEnvTaskConfig(TaskConfig):
    train_size: int = 1000  # rows {"seed": i}, i = seed .. seed + train_size - 1
    eval_size: int = 100  # held-out seeds after the training ones
    seed: int = 0
    answer_column: str = "seed"


def load_openenv_task(cfg: OpenEnvTaskConfig) -> Task:
    """Rows of reset seeds for env=openenv: the environment makes each episode from its seed."""
    train = [{"seed": cfg.seed + i} for i in range(cfg.train_size)]
    held = [{"seed": cfg.seed + cfg.train_size + i} for i in range(cfg.eval_size)]
    return Task("openenv", train, held, cfg)


@hookimpl
def rlvr_envs() -> list[PluginSpec]:
    return [
        PluginSpec("openenv", OpenEnvAdapter, OpenEnvConfig, "an OpenEnv environment, in process (env.id=<package>)")
    ]


@hookimpl
def rlvr_tasks() -> list[PluginSpec]:
    return [PluginSpec("openenv", load_openenv_task, OpenEnvTaskConfig, "reset seeds for env=openenv")]


@hookimpl
def rlvr_rewards() -> list[PluginSpec]:
    return [
        PluginSpec(
            "openenv_reward", openenv_reward_fn, OpenEnvRewardConfig, "env=openenv: the sum of the env's step rewards"
        ),
        PluginSpec(
            "openenv_valid", openenv_valid_fn, RewardConfig, "env=openenv: fraction of turns with a valid action"
        ),
    ]
