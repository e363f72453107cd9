"""Config schema and Hydra wiring.

The composed config has one node per component kind: ``model``, ``task``, ``loss``, ``engine``
(one plugin each, with a ``name`` field saying which), ``reward`` and ``logger`` (a mapping
``name -> params`` for each plugin in use), and ``trainer`` (:class:`TrainerConfig`).

Every plugin's config dataclass is stored in Hydra's ConfigStore twice: as a schema under
``schema/<kind>/<name>`` (the YAML files in ``rlvr/conf`` extend it, so their values are
type-checked) and, when no YAML of that name ships with rlvr, directly as ``<kind>/<name>`` so
that ``loss=<name>`` works for a third-party plugin exactly as for a built-in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, List, Optional

from rlvr.core import registry
from rlvr.core.errors import MissingValueError
from rlvr.core.hookspecs import KINDS, LIST_KINDS


@dataclass
class TrainerConfig:
    """The loop's own settings (``trainer.*``)."""

    max_steps: int = 10
    prompts_per_step: int = 4  # B: prompts sampled per step (groups)
    num_generations: int = 8  # G: completions per prompt
    num_iterations: int = 1  # mu: optimisation passes over each generation batch
    micro_batch_size: int = 0  # completions per forward/backward; 0 = the whole batch at once
    lr: float = 7e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    warmup_steps: int = 1
    lr_schedule: str = "cosine"  # constant | linear | cosine (after warmup, to 0 at max_steps)
    max_grad_norm: float = 1.0
    advantage_scaling: Optional[str] = None  # shortcut for advantage.scaling: group | batch | none
    advantage_baseline: Optional[str] = None  # shortcut for advantage.baseline: mean | rloo (leave-one-out)
    seed: int = 0
    save_steps: int = 0  # 0 = only the final checkpoint
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto = latest complete checkpoint in the run directory | none | a checkpoint path
    log_steps: int = 10
    eval_steps: int = 5  # held-out greedy accuracy every N steps and at the end (0 = never)
    eval_samples: int = 0  # held-out prompts per evaluation (0 = all)
    eval_num_samples: int = 1  # sampled completions per held-out prompt for sampled pass@1 (0 = greedy only)
    logprob_chunk_tokens: int = 1024
    pack_completions: bool = (
        True  # update: rows bucketed by length, no forward/backward on padding (rlvr/modeling/packing.py)
    )
    gradient_checkpointing: bool = False
    # auto (bfloat16 on a CPU with AVX512-BF16/AMX and float32 weights, else float32) | float32 | bfloat16:
    # the update's forward passes under torch.autocast, float32 master weights (docs/configuration.md)
    update_dtype: str = "auto"
    offload_activations: bool = False
    output_dir: Optional[str] = None  # default: Hydra's run directory (or rlvr-runs/<timestamp> outside Hydra)
    threads: int = 0  # torch intra-op threads; 0 = PyTorch's default
    reuse_freed_memory: bool = True  # glibc: keep freed blocks for the next step (rlvr.core.resources)
    progress: bool = True
    log_completions: int = 4  # completions kept per step in completions.jsonl
    max_bad_steps: int = 5  # non-finite losses in a row before the run stops
    save_merged: bool = False  # LoRA: also write final/merged/, the adapter merged into the base weights
    distributed: str = (
        "ddp"  # under torchrun: ddp (replicate the model) | fsdp (FSDP2: shard params, grads, optimizer)
    )
    dist_backend: str = "auto"  # auto (nccl with CUDA, else gloo) | gloo | nccl
    dynamic_sampling: str = (
        "refill"  # refill (drop all-agree groups, refill to B informative) | skip (drop only) | off
    )
    dynamic_max_rounds: int = 2  # refill: at most this many refill rounds per step
    curriculum: bool = False  # sample prompts whose recent groups all agreed less (rlvr/core/sampling.py)
    curriculum_decay: float = 0.25  # weight = max(curriculum_min_weight, curriculum_decay ** streak)
    curriculum_min_weight: float = 0.05
    # reward-hacking monitor (rlvr/core/monitor.py, docs/reward-hacking.md): audit/... metrics every step
    audit: bool = True
    audit_verifiers: Optional[List[str]] = None  # independent checks; None = math_answer when the task has answers
    audit_format_rewards: Optional[List[str]] = None  # format-only rewards; None = names with 'format' / 'xmlcount'
    audit_warn_fail_paid: float = 0.2  # warn when this share of completions fails a check but is paid like a pass
    audit_warn_duplicates: float = 0.9  # warn when this share of completions duplicates another of its group
    audit_warn_length_corr: float = 0.0  # warn when reward follows length above this correlation (0 = off)
    audit_warn_fail_closed: float = 0.0  # warn when a reward's fail_closed counter exceeds this (-1 = off)


def _with_name(cls: type, name: str, force: bool = False) -> type:
    """A subclass of the plugin's config dataclass with a ``name`` field saying which plugin it is."""
    if not force and any(f.name == "name" for f in dataclasses.fields(cls)):
        return cls
    return dataclasses.make_dataclass(cls.__name__, [("name", str, field(default=name))], bases=(cls,))


def _shipped_yaml(kind: str, name: str) -> bool:
    try:
        return resources.files("rlvr.conf").joinpath(kind, f"{name}.yaml").is_file()  # type: ignore[call-arg]
    except (FileNotFoundError, ModuleNotFoundError):
        return False


def store_plugin_configs() -> None:
    """Put every discovered plugin's config dataclass into Hydra's ConfigStore.

    ``<kind>=<name>`` selects a plugin by its name; ``<kind>=<distribution>:<name>`` selects it by
    distribution too (the way to choose when two installed plugins share a name). Verifiers have no
    config group of their own: each is selected as a reward (``reward=[<verifier>]``).
    """
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="schema/trainer", name="default", node=TrainerConfig)
    reg = registry.registry()
    for kind in KINDS:
        if kind == "verifier":
            continue
        for name, found in reg.candidates(kind).items():
            package = f"{kind}.{name}" if kind in LIST_KINDS else kind
            own = [e for e in found if e.source == registry.OWN_DISTRIBUTION]
            pick = (own or found)[-1]  # with a collision, using the plain name fails later, naming both
            node = _with_name(pick.spec.config, name)
            cs.store(group=f"schema/{kind}", name=name, node=node)
            if not _shipped_yaml(kind, name):
                cs.store(group=kind, name=name, node=node, package=package)
            for entry in found:
                qualified = _with_name(entry.spec.config, entry.qualified, force=True)
                cs.store(group=kind, name=entry.qualified, node=qualified, package=package)


def plugin_names(cfg: Any) -> list[tuple[str, str]]:
    """``(kind, plugin name)`` of every plugin a composed config selects.

    Single-plugin kinds read ``<kind>.name``; list kinds (reward, logger) read each entry's ``name``,
    falling back to its key.
    """
    out: list[tuple[str, str]] = []
    for kind in KINDS:
        node = cfg.get(kind) if hasattr(cfg, "get") else None
        if node is None:
            continue
        if kind in LIST_KINDS:
            out.extend((kind, plugin_name(key, sub)) for key, sub in node.items())
        elif hasattr(node, "get") and node.get("name"):
            out.append((kind, str(node.get("name"))))
    return out


def plugin_name(key: str, node: Any) -> str:
    """The plugin an entry ``<kind>.<key>`` of a list kind selects: its ``name`` field, else the key."""
    name = node.get("name") if hasattr(node, "get") else None
    return str(name or key)


def check_plugins(cfg: Any) -> None:
    """Fail (PluginNotFoundError / MissingValueError) on a plugin name that does not resolve to exactly one
    plugin, or a config value left missing (``???``), before anything is built."""
    from omegaconf import DictConfig, OmegaConf

    for kind, name in plugin_names(cfg):
        registry.get(kind, name)
    for kind in KINDS:  # parameters: unknown ones, wrong types, values without a default
        node = cfg.get(kind) if hasattr(cfg, "get") else None
        if node is None:
            continue
        if kind in LIST_KINDS:
            pairs = [(plugin_name(k, sub), sub) for k, sub in node.items()]
        else:
            pairs = [(node.get("name"), node)]
        for name, sub in pairs:
            if name:
                registry.build_config(kind, str(name), _params_keeping_missing(sub))
    if isinstance(cfg, DictConfig):
        missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
        if missing:
            raise MissingValueError(
                f"no value for {', '.join(missing)} (it has no default): add "
                f"{' '.join(k + '=<value>' for k in missing)} to the command"
            )


def _params_keeping_missing(node: Any) -> dict[str, Any]:
    """Like :func:`plugin_params`, but a missing value (``???``) stays missing instead of failing here."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        params = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
        assert isinstance(params, dict)
        params.pop("name", None)
        return params  # type: ignore[return-value]
    return plugin_params(node)


def plugin_params(node: Any) -> dict[str, Any]:
    """Plain-dict params of one plugin config node, without its ``name``."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        params = OmegaConf.to_container(node, resolve=True)
    elif dataclasses.is_dataclass(node):
        params = dataclasses.asdict(node)  # type: ignore[arg-type]
    else:
        params = dict(node or {})
    params.pop("name", None)  # type: ignore[arg-type,call-arg,union-attr]
    return params  # type: ignore[return-value]


def trainer_config(node: Any) -> TrainerConfig:
    """A validated TrainerConfig from a config node (DictConfig, dict or TrainerConfig)."""
    if isinstance(node, TrainerConfig):
        return node
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(TrainerConfig), plugin_params(node) if node is not None else {})
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def compose(overrides: list[str] | None = None) -> Any:
    """Compose the run config as ``rlvr train`` would, for notebooks and tests.

    >>> cfg = compose(["model=tiny", "trainer.max_steps=2"])   # doctest: +SKIP
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    store_plugin_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="rlvr.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


registry.on_change(store_plugin_configs)  # a plugin registered at run time is selectable from the config at once
