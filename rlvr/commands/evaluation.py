"""``rlvr eval``: held-out accuracy, pass@k and maj@k of a model, a checkpoint or a finished run.

``rlvr eval RUN_DIR`` (or ``checkpoint=RUN_DIR/final`` / ``RUN_DIR/checkpoints/checkpoint-N``) reuses
the run's ``config.json``: its model (base model and LoRA settings), task (with its data paths and
held-out split) and correctness check (``task.correct``), then loads the run's final weights (else its
latest checkpoint). Any ``key=value`` override still applies on top (``task.max_eval_rows=50``,
``task.correct=math_answer``); a group override (``task=gsm8k``) replaces that part of the saved
config. Without a run, the configuration is composed exactly as for ``rlvr train``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from rlvr.core.errors import ConfigError, PathNotFoundError

SAVED_KINDS = ("model", "task", "engine", "trainer")


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds an rlvr run's ``config.json`` (not a model's config.json of the same name)."""
    try:
        saved = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and "task" in saved and "model" in saved


def find_run(target: str) -> tuple[Optional[Path], Optional[Path]]:
    """``(run_dir, weights_dir)`` for a run directory, its ``final`` or one of its checkpoints.

    ``run_dir`` is the directory holding ``config.json`` (None when there is none); ``weights_dir`` the
    model to load: ``final``, else the latest complete checkpoint. Raises when nothing loadable is there."""
    from rlvr.core.checkpoint import latest_checkpoint

    path = Path(target).expanduser()
    if not path.is_dir():
        raise PathNotFoundError(
            f"{target!r}: no such directory (expected a run directory such as "
            "outputs/2026-11-25/10-00-00, or its final/ checkpoint)"
        )
    if is_run_dir(path):
        final = path / "final"
        if final.is_dir():
            return path, final
        latest = latest_checkpoint(path)
        if latest is None:
            raise PathNotFoundError(
                f"rlvr eval: run directory {str(path)!r} has neither final/ nor a complete "
                "checkpoint; let the run finish (or resume it) first"
            )
        return path, latest
    for parent in (path.parent, path.parent.parent):  # final/ or checkpoints/checkpoint-N
        if is_run_dir(parent):
            return parent, path
    return None, path


def _drop(tree: dict[str, Any], dotted: str) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def saved_choices(run_dir: Optional[Path], overrides: Sequence[str]) -> list[str]:
    """The run's group choices (``model=…``, ``task=…``, ``engine=…``) that ``overrides`` do not replace."""
    if run_dir is None:
        return []
    saved = json.loads((run_dir / "config.json").read_text())
    user_groups = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "." not in o.split("=", 1)[0]}
    return [
        f"{kind}={saved[kind]['name']}"
        for kind in ("model", "task", "engine")
        if kind not in user_groups and isinstance(saved.get(kind), dict) and saved[kind].get("name")
    ]


def run_config(run_dir: Optional[Path], overrides: Sequence[str]) -> Any:
    """The composed config for evaluation: ``overrides`` on top of the run's saved model / task /
    engine / trainer (when ``run_dir`` is given), on top of the defaults."""
    from omegaconf import OmegaConf, open_dict

    from rlvr.core.config import compose

    overrides = list(overrides)
    if run_dir is None:
        return compose(overrides)
    saved = json.loads((run_dir / "config.json").read_text())
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    user_groups = {k for k in keys if "." not in k}
    user_keys = [k for k in keys if "." in k]
    cfg = compose(saved_choices(run_dir, overrides) + overrides)
    for kind in SAVED_KINDS:
        node = saved.get(kind)
        if kind in user_groups or not isinstance(node, dict):
            continue
        node = json.loads(json.dumps(node))
        for key in user_keys:
            if key.startswith(kind + "."):
                _drop(node, key[len(kind) + 1 :])
        with open_dict(cfg):
            try:
                cfg[kind] = OmegaConf.merge(cfg[kind], node)
            except Exception as exc:  # noqa: BLE001 - a config saved by another rlvr version
                raise ConfigError(
                    f"rlvr eval: the {kind} config saved in {run_dir / 'config.json'} does not fit this "
                    f"rlvr version ({exc}); give {kind}=... overrides instead"
                ) from None
    return cfg


def run_eval(
    target: str = "",
    overrides: Sequence[str] = (),
    checkpoint: str = "",
    num_samples: int = 4,
    limit: int = 0,
    batch_prompts: int = 16,
    output: str = "",
    samples_out: str = "",
) -> dict[str, Any]:
    """Evaluate and return the result dict (also written to ``output`` as JSON when given).

    ``target`` / ``checkpoint``: a run directory, its ``final`` or a checkpoint (empty: the configured
    model, untrained). ``samples_out``: a JSON-lines file with one record per completion (greedy and
    sampled), see :func:`rlvr.core.evaluate.evaluate`."""
    from rlvr.core import registry
    from rlvr.core.config import plugin_params, trainer_config
    from rlvr.core.correctness import check_name
    from rlvr.core.evaluate import evaluate
    from rlvr.core.policy import load_for_eval

    where = target or checkpoint
    run_dir, weights = find_run(where) if where else (None, None)
    cfg = run_config(run_dir, overrides)
    task = registry.create("task", cfg.task.name, **plugin_params(cfg.task))
    engine = registry.create("engine", cfg.engine.name, **plugin_params(cfg.engine))
    policy = load_for_eval(cfg, str(weights) if weights else "")
    seed = trainer_config(cfg.trainer).seed
    records: Optional[list[dict[str, Any]]] = [] if samples_out else None
    metrics = evaluate(
        policy,
        task,
        engine,
        num_samples=num_samples,
        limit=limit,
        batch_prompts=batch_prompts,
        seed=seed,
        records=records,
    )
    result: dict[str, Any] = {
        "model": str(weights) if weights else cfg.model.name,
        "task": cfg.task.name,
        "correct": check_name(task),
        "run_dir": str(run_dir) if run_dir else None,
        **metrics,
    }
    if output:
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
    if samples_out and records is not None:
        with open(samples_out, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        result["samples_out"] = samples_out
    return result
