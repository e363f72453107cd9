"""What the experiment-tracker loggers (wandb, mlflow, trackio) share.

- :func:`scalars`: the numeric, finite metrics of a step, under the names of ``metrics.jsonl``.
- :func:`flatten`: the composed config as flat ``a.b.c -> value`` parameters.
- :func:`completion_rows`: a step's sampled completions as table rows.
- :class:`TrackerState`: ``RUN_DIR/trackers.json``, the tracker run each logger writes to and the last step
  it sent. A resumed run (``trainer.resume=auto``) continues the same tracker run, and steps the tracker
  already holds (done before the interruption, redone after the checkpoint with the same RNG state) are
  not sent again, so no step appears twice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from rlvr.core.errors import UnreachableError

STATE_FILE = "trackers.json"
COMPLETION_COLUMNS = ("step", "prompt", "completion", "answer", "rewards", "advantage", "truncated")


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics a tracker can plot: numbers (not bools), finite."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"lr": 1e-5}}`` -> ``{"trainer.lr": 1e-5}``; lists are kept as JSON text."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not config and prefix:
            out[prefix[:-1]] = "{}"
        return out
    key = prefix[:-1]
    if isinstance(config, (list, tuple)):
        out[key] = json.dumps(config, default=str)
    else:
        out[key] = config
    return out


def completion_rows(step: int, samples: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows with :data:`COMPLETION_COLUMNS` (rewards as JSON text) for a tracker table."""
    return [
        [
            step,
            str(s.get("prompt", "")),
            str(s.get("completion", "")),
            str(s.get("answer", "")),
            json.dumps(s.get("rewards") or {}),
            float(s.get("advantage", 0.0)),
            bool(s.get("truncated", False)),
        ]
        for s in samples
    ]


class TrackerState:
    """One tracker's entry in ``RUN_DIR/trackers.json``: ``{"run_id": ..., "last_step": ...}``."""

    def __init__(self, run_dir: Path, tracker: str) -> None:
        self.path = Path(run_dir) / STATE_FILE
        self.tracker = tracker
        entry = self._all().get(tracker, {})
        self.run_id: Optional[str] = entry.get("run_id")
        self.last_step: int = int(entry.get("last_step", 0))

    def _all(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def is_new(self, step: int) -> bool:
        """False for a step the tracker already holds (sent before a resume)."""
        return step > self.last_step

    def save(self, run_id: Optional[str] = None, last_step: Optional[int] = None) -> None:
        if run_id is not None:
            self.run_id = run_id
        if last_step is not None:
            self.last_step = max(self.last_step, last_step)
        data = self._all()
        data[self.tracker] = {"run_id": self.run_id, "last_step": self.last_step}
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)  # atomic


def check_reachable(url: str, what: str, fix: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError naming ``what`` and ``fix`` when nothing answers HTTP at ``url``."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the server answered (401/404/...): it is reachable
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnreachableError(f"{what}: cannot reach {url} ({reason}). {fix}") from None
