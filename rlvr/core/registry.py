"""Plugin discovery and construction.

Every component (reward, verifier, loss, model, engine, task, logger) is a plugin: a
:class:`PluginSpec` returned by a pluggy hook (see :mod:`rlvr.core.hookspecs`). Modules holding
hook implementations are found through the ``rlvr`` entry-point group, built-ins included, or
registered at run time with :func:`register`. ``create(kind, name, **params)`` is the one way to
build a plugin: the CLI, the Python API, tests and benchmarks all go through it.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from rlvr.core.hookspecs import KINDS, LIST_KINDS, PROJECT
from rlvr.core import hookspecs

AUTOLOAD_ENV = "RLVR_DISABLE_PLUGIN_AUTOLOAD"
OWN_DISTRIBUTION = "rlvr"


@dataclass
class NoConfig:
    """Config of a plugin that takes no parameters."""


@dataclass(frozen=True)
class PluginSpec:
    """One plugin: its name, the factory that builds it from its config, and the config dataclass.

    ``factory(cfg)`` receives an instance of ``config`` (all fields have defaults so that Hydra can
    show and override them).
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


class UnknownPluginError(KeyError):
    """A plugin name that no installed plugin provides."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class Registry:
    manager: pluggy.PluginManager
    sources: dict[int, tuple[str, str]] = field(default_factory=dict)  # id(plugin obj) -> (dist, module)
    _entries: dict[str, dict[str, Entry]] | None = None

    def entries(self, kind: str) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = self._collect()
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")
        return self._entries[kind]

    def _collect(self) -> dict[str, dict[str, Entry]]:
        found: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        for kind, hook_name in KINDS.items():
            hook = getattr(self.manager.hook, hook_name)
            # call each implementation separately to know which plugin returned which spec
            for impl in reversed(hook.get_hookimpls()):  # registration order
                specs = impl.function() or []
                source, module = self.sources.get(id(impl.plugin), ("runtime", getattr(impl.plugin, "__name__", repr(impl.plugin))))
                for spec in specs:
                    if not isinstance(spec, PluginSpec):
                        raise TypeError(f"plugin module {module} returned {spec!r} from {hook_name}; expected rlvr.PluginSpec")
                    # later registrations (e.g. a notebook's) replace earlier ones of the same name
                    found[kind][spec.name] = Entry(kind, spec, source, module)
        return found

    def invalidate(self) -> None:
        self._entries = None


_REGISTRY: Registry | None = None


def _new_registry() -> Registry:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    autoload = os.environ.get(AUTOLOAD_ENV, "").lower() not in ("1", "true", "yes")
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=PROJECT):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if not autoload and dist != OWN_DISTRIBUTION:
            continue
        if ep.name in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add(ep.name)
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide which one it is
            raise ImportError(f"rlvr plugin entry point {ep.name!r} = {ep.value!r} from distribution {dist!r} "
                              f"failed to import: {exc}. Uninstall it or set {AUTOLOAD_ENV}=1.") from exc
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
    from rlvr.core import config as _config  # local import: config imports registry

    _config.store_plugin_configs()


def add_plugin(kind: str, spec: PluginSpec) -> None:
    """Register one plugin of ``kind`` at run time, e.g. a reward written in a notebook."""
    hook_name = KINDS.get(kind)
    if hook_name is None:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")

    class _One:
        pass

    holder = _One()
    setattr(holder, hook_name, hookspecs.hookimpl(lambda: [spec]))
    holder.__name__ = f"runtime:{kind}:{spec.name}"  # type: ignore[attr-defined]
    register(holder, name=holder.__name__)  # type: ignore[attr-defined]


def names(kind: str) -> list[str]:
    return sorted(registry().entries(kind))


def get(kind: str, name: str) -> Entry:
    """The plugin ``name`` of ``kind``; an actionable error listing valid names if it is unknown."""
    entries = registry().entries(kind)
    if name not in entries:
        close = difflib.get_close_matches(name, entries, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownPluginError(
            f"unknown {kind} plugin {name!r}.{hint} Available {kind} plugins: {', '.join(sorted(entries)) or '(none)'}. "
            f"Run `rlvr plugins` to see where each comes from; third-party plugins are found through the "
            f"'rlvr' entry-point group.")
    return entries[name]


def build_config(kind: str, name: str, params: dict[str, Any]) -> Any:
    """Validate ``params`` against the plugin's config dataclass and return an instance of it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    spec = get(kind, name).spec
    params = {k: v for k, v in params.items() if k != "name"}
    known = {f.name for f in dataclasses.fields(spec.config)}
    unknown = [k for k in params if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"{kind} plugin {name!r} has no parameter {', '.join(hints)}. "
                        f"Its parameters are: {', '.join(sorted(known)) or '(none)'}.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(spec.config), params)
    except OmegaConfBaseException as exc:
        raise ValueError(f"bad parameter for {kind} plugin {name!r}: {exc}") from None
    return OmegaConf.to_object(merged)


def create(kind: str, name: str, **params: Any) -> Any:
    """Build the plugin ``name`` of ``kind`` with config ``params``.

    >>> loss = create("loss", "grpo", epsilon=0.2)        # doctest: +SKIP
    """
    from rlvr.core.contracts import check

    entry = get(kind, name)
    cfg = build_config(kind, name, params)
    return check(kind, entry.spec.factory(cfg), name)

