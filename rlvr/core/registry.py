"""Plugin discovery and construction.

Every component (reward, verifier, loss, model, engine, task, logger) is a plugin: a
:class:`PluginSpec` returned by a pluggy hook (see :mod:`rlvr.core.hookspecs`). Modules holding
hook implementations are found through the ``rlvr`` entry-point group, built-ins included, or
registered at run time with :func:`register`. ``create(kind, name, **params)`` is the one way to
build a plugin: the CLI, the Python API, tests and benchmarks all go through it.

Rules (see docs/plugins.md):

- A broken entry point (its module fails to import, or its hook raises) is skipped with a warning
  on stderr and listed by ``rlvr plugins`` as broken, with the reason; the other plugins work.
- ``RLVR_DISABLE_PLUGINS=a,b`` turns off entry points by distribution name, entry-point name,
  plugin name or ``distribution:plugin``.
- Two distributions providing a plugin of the same kind and name is an error as soon as that name
  is used, naming both; ``distribution:name`` picks one. Plugins registered at run time
  (:func:`register`, :func:`add_plugin`) replace installed ones of the same name on purpose.
- Every verifier is also a reward of the same name (pass -> ``pass_score``, fail -> ``fail_score``),
  unless its distribution ships a reward of that name itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from rlvr.core import hookspecs
from rlvr.core.errors import (
    ConfigError,
    ConfigTypeError,
    MissingValueError,
    PluginError,
    PluginNotFoundError,
    RlvrError,
)
from rlvr.core.hookspecs import KINDS, LIST_KINDS, PROJECT

AUTOLOAD_ENV = "RLVR_DISABLE_PLUGIN_AUTOLOAD"
DISABLE_ENV = "RLVR_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "rlvr"
RUNTIME = "runtime"

UnknownPluginError = PluginNotFoundError  # the name used before rlvr.core.errors existed


@dataclass
class NoConfig:
    """Config of a plugin that takes no parameters."""


@dataclass(frozen=True)
class PluginSpec:
    """One plugin: its name, the factory that builds it from its config, and the config dataclass.

    ``factory(cfg)`` receives an instance of ``config`` (give every field a default so that Hydra
    can show and override it; a field without one must be set by the user, who is told its key).
    """

    name: str
    factory: Callable[[Any], Any]
    config: type = NoConfig
    description: str = ""


@dataclass
class Entry:
    """A discovered plugin and where it came from."""

    kind: str
    spec: PluginSpec
    source: str  # distribution name, or "runtime"
    module: str

    @property
    def qualified(self) -> str:
        """``distribution:name``, the spelling that picks this plugin when two share a name."""
        return f"{self.source}:{self.spec.name}"


@dataclass(frozen=True)
class Broken:
    """An entry point that could not be loaded, and why."""

    entry_point: str  # "name = value", or "module (hook)" when the module imported but its hook failed
    distribution: str
    reason: str
    at_import: bool = True


def normalize(dist: str) -> str:
    """A distribution name compared the way pip does (PEP 503): lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _disabled_names() -> set[str]:
    return {normalize(n.strip()) for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _warn(message: str) -> None:
    print(f"rlvr: warning: {message}", file=sys.stderr)


@dataclass
class Registry:
    manager: pluggy.PluginManager
    sources: dict[int, tuple[str, str]] = field(default_factory=dict)  # id(plugin obj) -> (dist, module)
    broken: list[Broken] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)  # entry points / plugins turned off by RLVR_DISABLE_PLUGINS
    _found: dict[str, dict[str, list[Entry]]] | None = None

    def candidates(self, kind: str) -> dict[str, list[Entry]]:
        """Every plugin of ``kind`` by name; a name with more than one entry is a collision."""
        if kind not in KINDS:
            raise ConfigError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")
        if self._found is None:
            self._found = self._collect()
        return self._found[kind]

    def entries(self, kind: str) -> dict[str, Entry]:
        """Plugins of ``kind`` by the name that selects them: the plain name when it is unique, and
        ``distribution:name`` for each of the plugins that share a name."""
        out: dict[str, Entry] = {}
        for name, found in self.candidates(kind).items():
            if len(found) == 1:
                out[name] = found[0]
            else:
                out.update({e.qualified: e for e in found})
        return out

    def collisions(self, kind: str) -> dict[str, list[Entry]]:
        return {n: found for n, found in self.candidates(kind).items() if len(found) > 1}

    def _specs(self, hook_name: str, impl: Any, disabled: set[str]) -> list[tuple[PluginSpec, str, str]]:
        source, module = self.sources.get(
            id(impl.plugin), (RUNTIME, getattr(impl.plugin, "__name__", repr(impl.plugin)))
        )
        try:
            specs = list(impl.function() or [])
            bad = [s for s in specs if not isinstance(s, PluginSpec)]
            if bad:
                raise TypeError(f"{hook_name}() returned {bad[0]!r}; it must return a list of rlvr.PluginSpec")
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not block the others
            reason = f"{type(exc).__name__}: {exc}"
            self.broken.append(Broken(f"{module} ({hook_name})", source, reason, at_import=False))
            _warn(
                f"skipping plugin module {module} from distribution {source!r}: {hook_name}() failed ({reason}). "
                f"Fix or uninstall it, or set {DISABLE_ENV}={source} to silence this."
            )
            return []
        kept = []
        for spec in specs:
            if source != RUNTIME and {normalize(spec.name), normalize(f"{source}:{spec.name}")} & disabled:
                self.disabled.append(f"{source}:{spec.name}")
                continue
            kept.append((spec, source, module))
        return kept

    def _collect(self) -> dict[str, dict[str, list[Entry]]]:
        found: dict[str, dict[str, list[Entry]]] = {k: {} for k in KINDS}
        disabled = _disabled_names()
        for kind, hook_name in KINDS.items():
            hook = getattr(self.manager.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):  # registration order
                for spec, source, module in self._specs(hook_name, impl, disabled):
                    entry = Entry(kind, spec, source, module)
                    same = found[kind].setdefault(spec.name, [])
                    if source == RUNTIME:  # registered in code: replaces what is installed, on purpose
                        same[:] = [entry]
                    else:
                        same[:] = [e for e in same if (e.source, e.module) != (source, module)] + [entry]
        for name, verifiers in found["verifier"].items():
            rewards = found["reward"].setdefault(name, [])
            for v in verifiers:  # every verifier is also a reward, unless its distribution ships one of that name
                if not any(r.source == v.source for r in rewards):
                    rewards.append(Entry("reward", verifier_reward_spec(v.spec), v.source, v.module))
            if not rewards:
                del found["reward"][name]
        return found

    def invalidate(self) -> None:
        self._found = None
        self.broken = [b for b in self.broken if b.at_import]  # keep import failures; hooks are called again
        self.disabled = []


# ----- verifiers as rewards -------------------------------------------------------------------------
VERIFIER_REWARD_FIELDS = (
    ("weight", float, 1.0),
    ("on_error", str, "raise"),
    ("pass_score", float, 1.0),
    ("fail_score", float, 0.0),
)


def verifier_reward_spec(spec: PluginSpec) -> PluginSpec:
    """The reward made of a verifier: its config plus weight / on_error / pass_score / fail_score, and a
    factory that maps pass -> pass_score, fail -> fail_score, None -> None."""
    have = {f.name for f in dataclasses.fields(spec.config)}
    extra = [(n, t, field(default=d)) for n, t, d in VERIFIER_REWARD_FIELDS if n not in have]
    config = (
        dataclasses.make_dataclass(f"{spec.config.__name__}AsReward", extra, bases=(spec.config,))
        if extra
        else spec.config
    )
    own = {f.name for f in dataclasses.fields(spec.config)}

    def factory(cfg: Any) -> Any:
        from rlvr.core.rewards import verifier_as_reward

        vcfg = spec.config(**{k: getattr(cfg, k) for k in own if hasattr(cfg, k)})
        return verifier_as_reward(spec.factory(vcfg), cfg.pass_score, cfg.fail_score)

    return PluginSpec(
        spec.name,
        factory,
        config,
        (spec.description + " " if spec.description else "")
        + "(a verifier: pass_score when it passes, fail_score when it fails)",
    )


# ----- the process-wide registry ----------------------------------------------------------------------
_REGISTRY: Registry | None = None
_LISTENERS: list[Callable[[], None]] = []


def on_change(callback: Callable[[], None]) -> None:
    """Call ``callback()`` after each run-time registration (the config module keeps Hydra's store in step)."""
    if callback not in _LISTENERS:
        _LISTENERS.append(callback)


def _new_registry() -> Registry:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    autoload = os.environ.get(AUTOLOAD_ENV, "").lower() not in ("1", "true", "yes")
    disabled = _disabled_names()
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group=PROJECT):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if not autoload and normalize(dist) != OWN_DISTRIBUTION:
            continue
        if (dist, ep.name) in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add((dist, ep.name))
        if {normalize(dist), normalize(ep.name), normalize(f"{dist}:{ep.name}")} & disabled:
            reg.disabled.append(f"{dist}:{ep.name}")
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not block every command
            reason = f"{type(exc).__name__}: {exc}"
            reg.broken.append(Broken(f"{ep.name} = {ep.value}", dist, reason))
            _warn(
                f"skipping plugin entry point {ep.name!r} = {ep.value!r} from distribution {dist!r}: it failed to "
                f"import ({reason}). Fix or uninstall it (pip uninstall {dist}), or set {DISABLE_ENV}={ep.name} "
                "to silence this."
            )
            continue
        pm.register(plugin, name=f"{dist}:{ep.name}")
        reg.sources[id(plugin)] = (dist, ep.value)
    return reg


def registry() -> Registry:
    """The process-wide registry, discovered on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _new_registry()
    return _REGISTRY


def register(plugin: object, name: str | None = None) -> None:
    """Register a module or object implementing rlvr hooks at run time (no packaging needed)."""
    reg = registry()
    reg.manager.register(plugin, name=name)
    reg.invalidate()
    for callback in _LISTENERS:
        callback()


def add_plugin(kind: str, spec: PluginSpec) -> None:
    """Register one plugin of ``kind`` at run time, e.g. a reward written in a notebook."""
    hook_name = KINDS.get(kind)
    if hook_name is None:
        raise ConfigError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")

    class _One:
        pass

    holder = _One()
    setattr(holder, hook_name, hookspecs.hookimpl(lambda: [spec]))
    holder.__name__ = f"runtime:{kind}:{spec.name}"  # type: ignore[attr-defined]
    register(holder, name=holder.__name__)  # type: ignore[attr-defined]


def names(kind: str) -> list[str]:
    """The names that select a plugin of ``kind`` (``distribution:name`` for names two plugins share)."""
    return sorted(registry().entries(kind))


def get(kind: str, name: str) -> Entry:
    """The plugin ``name`` (or ``distribution:name``) of ``kind``.

    Raises :class:`PluginNotFoundError` listing the valid names when it is unknown, and naming both
    distributions when two provide it.
    """
    reg = registry()
    found = reg.candidates(kind)
    dist, sep, plain = name.rpartition(":")
    if sep and plain in found:
        match = [e for e in found[plain] if normalize(e.source) == normalize(dist)]
        if match:
            return match[-1]
        raise PluginNotFoundError(
            f"no {kind} plugin {plain!r} from distribution {dist!r}; {plain!r} comes from: "
            f"{', '.join(repr(e.source) for e in found[plain])}. Run `rlvr plugins` to see every plugin."
        )
    if name in found and len(found[name]) == 1:
        return found[name][0]
    if name in found:
        where = "; ".join(f"{e.qualified} (module {e.module})" for e in found[name])
        raise PluginNotFoundError(
            f"{kind} plugin name {name!r} is ambiguous: {len(found[name])} installed plugins provide it: {where}. "
            f"Choose one with {kind}=<distribution>:{name}"
            + (
                f" (e.g. {kind}=[{found[name][-1].qualified}])"
                if kind in LIST_KINDS
                else f" (e.g. {kind}={found[name][-1].qualified})"
            )
            + f", or turn one off with {DISABLE_ENV}=<distribution>."
        )
    valid = sorted(reg.entries(kind))
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    broken = [b for b in reg.broken]
    note = (
        (
            f" Note: {len(broken)} plugin entry point(s) failed to load "
            f"({', '.join(b.distribution for b in broken)}); "
            "see `rlvr plugins`."
        )
        if broken
        else ""
    )
    raise PluginNotFoundError(
        f"unknown {kind} plugin {name!r}.{hint} Available {kind} plugins: {', '.join(valid) or '(none)'}. "
        f"Run `rlvr plugins` to see where each comes from; third-party plugins are found through the "
        f"'rlvr' entry-point group.{note}"
    )


def config_key(kind: str, name: str, key: str) -> str:
    """The command-line key of a plugin parameter: ``loss.epsilon`` or ``reward.<name>.weight``."""
    plain = name.rpartition(":")[2]
    return f"{kind}.{plain}.{key}" if kind in LIST_KINDS else f"{kind}.{key}"


def build_config(kind: str, name: str, params: dict[str, Any]) -> Any:
    """Validate ``params`` against the plugin's config dataclass and return an instance of it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    spec = get(kind, name).spec
    params = {k: v for k, v in params.items() if k != "name"}
    known = {f.name for f in dataclasses.fields(spec.config)}
    unknown = [k for k in params if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigTypeError(
            f"{kind} plugin {name!r} has no parameter {', '.join(hints)}. "
            f"Its parameters are: {', '.join(sorted(known)) or '(none)'}."
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(spec.config), params)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise MissingMandatoryValue(missing[0])
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue:
        missing = sorted(OmegaConf.missing_keys(merged))
        keys = [config_key(kind, name, k) for k in missing]
        raise MissingValueError(
            f"{kind} plugin {name!r} needs a value for {', '.join(keys)} (it has no default): "
            f"add {' '.join(k + '=<value>' for k in keys)} to the command"
        ) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad parameter for {kind} plugin {name!r}: {exc}") from None


def create(kind: str, name: str, **params: Any) -> Any:
    """Build the plugin ``name`` of ``kind`` with config ``params``.

    A factory that raises something other than an :class:`~rlvr.core.errors.RlvrError` is reported
    as a :class:`PluginError` naming the plugin, its distribution and its module.

    >>> loss = create("loss", "grpo", epsilon=0.2)        # doctest: +SKIP
    """
    from rlvr.core.contracts import check

    entry = get(kind, name)
    cfg = build_config(kind, name, params)
    try:
        plugin = entry.spec.factory(cfg)
    except RlvrError:
        raise
    except Exception as exc:
        raise PluginError(
            f"{kind} plugin {entry.spec.name!r} from distribution {entry.source!r} (module "
            f"{entry.module}) failed to build: {type(exc).__name__}: {exc}"
        ) from exc
    return check(kind, plugin, name)
