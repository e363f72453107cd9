"""Loading a split with the Hugging Face ``datasets`` library (imported lazily; optional dependency).

Used by ``task=hf``, ``task=gsm8k`` (the Hub copy when cached) and ``rlvr sft``. ``cfg`` is any object
with the fields of :class:`rlvr.plugins.tasks.hf.HFTaskConfig` that matter here: ``path``, ``config_name``,
``split``, ``streaming``, ``cache_dir``, ``revision``.
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from rlvr.core.errors import DataError, MissingDependencyError, PathNotFoundError

INSTALL_HINT = "pip install 'rlvr[datasets]' (or pip install datasets)"
FILE_BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
}


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(f"loading this dataset needs the `datasets` package: {INSTALL_HINT}") from None
    return datasets


def hub_cache_dirs(path: str, cache_dir: Optional[str] = None) -> list[str]:
    """The prepared copies of Hub dataset ``path`` in the datasets cache (empty when it is not cached)."""
    datasets = _datasets()
    root = os.path.expanduser(str(cache_dir or datasets.config.HF_DATASETS_CACHE))
    parts = path.split("/")
    parts[-1] = datasets.naming.camelcase_to_snakecase(parts[-1])
    return sorted(d for d in glob.glob(os.path.join(root, "___".join(parts), "*", "*", "*")) if os.path.isdir(d))


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Make ``datasets`` read its cache without trying the network (restored afterwards)."""
    datasets = _datasets()
    old = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = old


def _is_saved_dataset(p: Path) -> bool:
    return p.is_dir() and any((p / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json"))


def load_split(cfg: Any, split: str) -> Any:
    """One split as a ``datasets.Dataset`` (or ``IterableDataset`` when streaming).

    Errors name the path or split at fault and what exists instead.
    """
    datasets = _datasets()
    if not cfg.path:
        raise DataError(
            "task=hf needs task.path: a Hub id (openai/gsm8k), a data file (.parquet/.csv/.json/"
            ".jsonl/.arrow) or a directory written by save_to_disk"
        )
    local = Path(os.path.expanduser(cfg.path))
    kwargs: dict[str, Any] = {"cache_dir": cfg.cache_dir}
    try:
        if _is_saved_dataset(local):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                _check_split(ds, split, cfg.path)
                ds = ds[split]
            elif split != cfg.split:
                raise DataError(
                    f"task.path={cfg.path!r} holds a single dataset (no splits), so task.eval_split="
                    f"{split!r} does not exist; drop task.eval_split (eval_fraction is held out)"
                )
            return ds.to_iterable_dataset() if cfg.streaming else ds
        suffix = local.suffix.lower() if not local.is_dir() else ""
        if suffix in FILE_BUILDERS or glob.has_magic(cfg.path):
            files = sorted(glob.glob(str(local))) if glob.has_magic(cfg.path) else [str(local)]
            if not files or not all(os.path.isfile(f) for f in files):
                raise PathNotFoundError(f"task.path={cfg.path!r}: no such data file")
            builder = FILE_BUILDERS.get(Path(files[0]).suffix.lower())
            if builder is None:
                raise DataError(
                    f"task.path={cfg.path!r}: unknown file type {Path(files[0]).suffix!r}; "
                    f"use one of {sorted(FILE_BUILDERS)}"
                )
            if builder == "csv" and Path(files[0]).suffix.lower() == ".tsv":
                kwargs["delimiter"] = "\t"
            if split != "train":
                raise DataError(
                    f"task.path={cfg.path!r} is one data file, which datasets loads as the 'train' "
                    f"split; task split {split!r} does not exist (use task.split=train)"
                )
            try:
                return datasets.load_dataset(
                    builder, data_files=files, split="train", streaming=cfg.streaming, **kwargs
                )
            except ValueError as exc:
                if "corresponds to no data" in str(exc):
                    raise DataError(f"task.path={cfg.path!r} split 'train' is empty") from None
                raise
        if cfg.path.startswith((".", "/", "~")) and not local.exists():
            raise PathNotFoundError(f"task.path={cfg.path!r}: no such file or directory")
        cached = not local.exists() and bool(hub_cache_dirs(cfg.path, cfg.cache_dir))
        with _offline() if cached else contextlib.nullcontext():
            full = datasets.load_dataset(
                cfg.path, cfg.config_name, revision=cfg.revision, streaming=cfg.streaming, **kwargs
            )
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise PathNotFoundError(
            f"task.path={cfg.path!r}: could not load it ({exc}). It is not in the local datasets cache "
            f"({cfg.cache_dir or datasets.config.HF_DATASETS_CACHE}) and the Hub cannot be reached: download it once "
            'online (python -c "import datasets; datasets.load_dataset(...)"), or give a local file or '
            "save_to_disk directory."
        ) from None
    _check_split(full, split, cfg.path)
    return full[split]


def _check_split(ds: Any, split: str, path: str) -> None:
    if split not in ds:
        raise DataError(
            f"task.path={path!r} has no split {split!r}; its splits are: {', '.join(ds)}. "
            "Set task.split / task.eval_split to one of them."
        )


def hub_rows(
    path: str, config_name: Optional[str], splits: tuple[str, ...], download: bool
) -> Optional[dict[str, list]]:
    """Rows of ``splits`` of Hub dataset ``path``: from the local cache without the network when it is cached;
    downloaded when ``download`` (and not HF_HUB_OFFLINE); None when ``datasets`` is missing or it is unavailable."""
    try:
        datasets = _datasets()
    except ImportError:
        return None
    if not hub_cache_dirs(path) and (not download or datasets.config.HF_HUB_OFFLINE):
        return None
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        path=path, config_name=config_name, split=splits[0], streaming=False, cache_dir=None, revision=None
    )
    try:
        return {s: [dict(r) for r in load_split(cfg, s)] for s in splits}
    except (FileNotFoundError, ValueError, ConnectionError):
        return None
