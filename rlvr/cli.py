"""The ``rlvr`` command (``python -m rlvr`` is the same).

Each subcommand is one :class:`Command` in :data:`COMMANDS`: its name, a one-line help, the function
that runs it and a function adding its argparse arguments. Adding a command is one entry::

    Command("audit", "reward-hacking audit of a run", cmd_audit, add_audit_arguments)

``run(args)`` receives the parsed ``argparse.Namespace``. Commands registered with
``add_arguments=None`` (``train`` and ``eval``, which take Hydra ``key=value`` overrides, ``-m`` and
``--cfg``) receive the raw argument list instead, and print their ``description`` for ``--help``.

Exit codes: 0 success; 2 the command line or config is wrong and nothing started; 1 the run
failed. Errors a user can fix (:class:`rlvr.core.errors.RlvrError`) are printed as one line; any
other exception is a bug and keeps its traceback. ``RLVR_TRACEBACK=1`` shows the traceback of
user-facing errors too.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from rlvr.core.errors import ConfigError, PluginNotFoundError, RlvrError, UsageError

GROUPS = ("model", "task", "reward", "loss", "advantage", "engine", "trainer", "logger")
ENV_DEFAULTS = {
    # PyTorch's OpenMP threads spin while waiting by default; on shared or busy cores that makes small
    # matmuls up to 17x slower. PASSIVE sleeps instead (docs/cli.md has the measurement). A value the
    # user set is kept.
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
}
HYDRA_FLAGS_WITH_VALUE = (
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--info",
    "-i",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
)
HYDRA_FLAGS = ("-m", "--multirun", "--resolve", "--run", "-r", "--shell-completion", "-sc")
MAX_SWEEP_CHECKS = 64
SUBPARSERS: dict[str, argparse.ArgumentParser] = {}


@dataclass(frozen=True)
class Command:
    """One ``rlvr`` subcommand."""

    name: str
    help: str  # one line, shown by `rlvr --help`
    run: Callable[[Any], int]  # returns the exit code
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None  # None: run() gets the raw args
    description: str = ""  # the longer text of `rlvr <name> --help`


def set_env_defaults() -> None:
    """Environment defaults that must be in place before torch is imported (see :data:`ENV_DEFAULTS`)."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def one_line_warning(message: Any, category: type, filename: str, lineno: int, line: Optional[str] = None) -> str:
    """``warnings.formatwarning`` for the CLI: where and what, without the echoed source line (which says nothing
    to someone running ``rlvr train``)."""
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"


def _quiet_libraries() -> None:
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel-hub fallback notices
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _traceback_wanted() -> bool:
    return bool(os.environ.get("RLVR_TRACEBACK") or os.environ.get("HYDRA_FULL_ERROR"))


# ----- config checks before anything starts -------------------------------------------------------------
def _keys_at(node: Any) -> list[str]:
    from omegaconf import DictConfig

    return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []


def split_hydra_args(args: list[str]) -> tuple[list[str], list[str], bool]:
    """Split ``rlvr train`` arguments into (config overrides, Hydra flags, multirun?)."""
    overrides, flags, multirun = [], [], False
    i = 0
    while i < len(args):
        a = args[i]
        name = a.split("=", 1)[0]
        if a in ("-m", "--multirun"):
            multirun = True
            flags.append(a)
        elif a.startswith("-") and name in HYDRA_FLAGS_WITH_VALUE:
            flags.append(a)
            if "=" not in a and i + 1 < len(args):
                i += 1
                flags.append(args[i])
        elif a.startswith("-"):
            flags.append(a)
        else:
            overrides.append(a)
        i += 1
    return overrides, flags, multirun


def _check_output_dir(overrides: list[str], multirun: bool) -> Optional[str]:
    """``hydra.run.dir`` / ``hydra.sweep.dir`` (or the default outputs/ multirun/) must be creatable as a directory."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = next(
        (o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key),
        "multirun" if multirun else "outputs",
    )
    path = Path(value).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = f"{key}={value}" if p == path else f"{key}={value} (its parent {str(p)!r})"
                return (
                    f"{what} is an existing file, not a directory: give a directory to write the run into, "
                    f"e.g. {key}={value}.d"
                )
            break
    return None


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """The override lists of a ``-m`` sweep's jobs: all of them up to MAX_SWEEP_CHECKS, beyond that each swept
    value once (with the other sweeps at their first value)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices: list[list[str]] = []
    for text, o in zip(overrides, parsed):
        if not o.is_sweep_override():
            choices.append([text])
            continue
        try:
            values = list(o.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - a sweep kind we cannot expand (glob): Hydra checks it when it runs
            continue
        choices.append([f"{o.get_key_element()}={v}" for v in values] or [text])
    total = 1
    for c in choices:
        total *= len(c)
    if total <= MAX_SWEEP_CHECKS:
        return [list(combo) for combo in itertools.product(*choices)]
    firsts = [c[0] for c in choices]
    jobs = [firsts]
    for i, c in enumerate(choices):
        jobs.extend(firsts[:i] + [v] + firsts[i + 1 :] for v in c[1:])
    return jobs


def check_overrides(overrides: list[str], multirun: bool = False) -> Optional[str]:
    """Compose the config (each job of a ``-m`` sweep) and resolve its plugins; on failure return an
    actionable message (closest key, valid names, the key to set); ``None`` when it is valid."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    problem = _check_output_dir(overrides, multirun)
    if problem:
        return problem
    plain = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    if multirun:
        try:
            jobs = expand_sweeps(plain)
        except (HydraException, OmegaConfBaseException) as exc:
            return str(exc).strip().splitlines()[0]
    else:
        jobs = [plain]
    for job in jobs:
        problem = _check_one(job)
        if problem:
            return problem + (f" (in the sweep job {' '.join(job)})" if multirun and len(jobs) > 1 else "")
    return None


def _check_one(plain: list[str]) -> Optional[str]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rlvr.core.config import check_plugins, compose

    try:
        cfg = compose(plain)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        return _explain_compose_error(plain, exc)
    try:
        check_plugins(cfg)
    except (PluginNotFoundError, ConfigError) as exc:
        return str(exc)
    return None


def _explain_compose_error(plain: list[str], exc: BaseException) -> str:
    from hydra.errors import HydraException
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    from rlvr.core.config import compose

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    missing = re.search(r"Could not (?:load|find) '(\w+)/([^']+)'", str(exc))
    if missing:  # an unknown plugin / preset name in a config group: list the valid ones
        return unknown_choice(missing.group(1), missing.group(2))
    unknown_group = re.search(r"Could not override '(\w+)'", str(exc))
    if unknown_group and unknown_group.group(1) == "verifier":
        return (
            "there is no `verifier` config group: every verifier is also a reward of the same name "
            "(pass_score / fail_score), so select it with reward=[<name>]; `rlvr plugins` lists them."
        )
    # which dotted key failed? compose with only the group choices and walk the key path
    groups = [
        o for o in plain if o.split("=", 1)[0].lstrip("+~").split(".")[0] in GROUPS and "." not in o.split("=", 1)[0]
    ]
    try:
        base = compose(groups)
    except (HydraException, OmegaConfBaseException, ValueError):
        return str(exc).strip()
    for o in plain:
        key = o.split("=", 1)[0]
        if key.startswith(("+", "~")) or "." not in key:
            continue
        node: Any = base
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, DictConfig) or part not in node:
                level = ".".join(parts[:depth]) or "(top level)"
                keys = _keys_at(node)
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f" Did you mean {'.'.join(parts[:depth] + [close[0]])!r}?" if close else ""
                return (
                    f"unknown config key {key!r}: {level} has no key {part!r}.{hint} "
                    f"Keys at {level}: {', '.join(keys)}. Use `rlvr train --cfg job` to see the whole config."
                )
            node = node[part]
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():  # wrong type: say which and why
        return f"{first}: {str(cause).strip().splitlines()[0]}"
    return f"{first}" if "Available options" not in str(exc) else str(exc).strip()


def group_options(group: str) -> list[str]:
    """Every name ``group=<name>`` accepts: the shipped YAML presets and the discovered plugins."""
    from importlib import resources

    from rlvr.core.hookspecs import KINDS
    from rlvr.core.registry import names

    found = set(names(group)) if group in KINDS else set()
    try:
        found.update(
            f.name[:-5] for f in resources.files("rlvr.conf").joinpath(group).iterdir() if f.name.endswith(".yaml")
        )
    except (FileNotFoundError, NotADirectoryError):
        pass
    return sorted(found)


def unknown_choice(group: str, name: str) -> str:
    options = group_options(group)
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"unknown {group} {name!r}.{hint} Available options in {group!r}: {', '.join(options) or '(none)'}. "
        "Run `rlvr plugins` to see every plugin and where it comes from."
    )


# ----- train / eval: Hydra-style key=value arguments -------------------------------------------------
TRAIN_HELP = """usage: rlvr train [key=value ...] [-m] [--cfg job|hydra|all] [--hydra-help]

Run GRPO with the composed config. Every argument is a Hydra override:
  rlvr train                                   # the embedded default (SmolLM2 learns arithmetic on the CPU)
  rlvr train model=tiny loss=dr_grpo trainer.lr=1e-5 trainer.max_steps=50
  rlvr train reward=[arithmetic,proximity] reward.proximity.weight=0.5
  rlvr train reward=[mydist:arithmetic]        # pick one of two installed plugins that share a name
  rlvr train -m loss=grpo,dr_grpo trainer.lr=1e-6,5e-6    # a sweep: one run per combination
  rlvr train model=tiny --cfg job              # print the composed config and exit

config groups: model, task, reward (a list), loss, engine, trainer, logger (a list);
`rlvr plugins` lists every plugin name, `rlvr train --cfg job` every key.
  -m, --multirun     run one job per combination of comma-separated values
  --cfg job          print the config instead of running (also: hydra, all)
  --hydra-help       Hydra's own help (launchers, sweepers, hydra.* keys)
  hydra.run.dir=DIR  the run directory (default outputs/<date>/<time>)

exit codes: 0 done; 2 bad command line or config (nothing started); 1 the run failed.
"""


def cmd_train(args: list[str]) -> int:
    """``rlvr train [key=value ...]``: compose, check, and run the Hydra app."""
    import hydra
    from omegaconf import DictConfig

    from rlvr.core.config import store_plugin_configs

    store_plugin_configs()
    overrides, flags, multirun = split_hydra_args(args)
    if not any(f in ("--hydra-help", "--info", "-i", "--shell-completion", "-sc") for f in flags):
        problem = check_overrides(overrides, multirun)
        if problem:
            print(f"rlvr train: {problem}", file=sys.stderr)
            return 2

    @hydra.main(version_base="1.3", config_path="conf", config_name="config")
    def run(cfg: DictConfig) -> float:
        from rlvr.core.trainer import ResumeConfigError, Trainer, TrainingInterrupted

        _quiet_libraries()
        try:
            trainer = Trainer(cfg)
            metrics = trainer.train()
        except TrainingInterrupted as exc:
            print(f"rlvr train: {exc}", file=sys.stderr)
            sys.exit(130)
        except KeyboardInterrupt:
            print(
                "rlvr train: interrupted; run the same command again to resume from the last checkpoint "
                "(checkpoints/ in the run directory; trainer.save_steps sets how often one is written)",
                file=sys.stderr,
            )
            sys.exit(130)
        except ResumeConfigError as exc:  # the run directory's checkpoint was made with other settings
            print(f"rlvr train: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except RlvrError as exc:
            if _traceback_wanted():
                raise
            print(f"rlvr train: error: {exc}", file=sys.stderr)
            sys.exit(1)
        if trainer.dist.is_main:
            print(
                f"rlvr: finished {trainer.step} steps; run directory: {trainer.run_dir} "
                f"(checkpoint: {trainer.run_dir / 'final'})"
            )
        reward = metrics.get("reward/mean")
        return float("nan") if reward is None else float(reward)

    sys.argv = ["rlvr train", *args]
    try:
        run()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


SFT_HELP = """usage: rlvr sft [key=value ...]

Supervised fine-tuning on worked answers (loss on the completion tokens only), with the same model plugins,
checkpoints and resume as `rlvr train`; its final/ is a plain transformers model that
`rlvr train model=hf model.name_or_path=<sft run>/final` starts from. Config: rlvr/conf/sft.yaml
(`rlvr sft --cfg job` prints it; sft=gsm8k_format is the GSM8K format-priming preset). See docs/sft.md.

exit codes: 0 done; 2 bad command line or config; 1 the run failed.
"""


def cmd_sft(args: list[str]) -> int:
    """``rlvr sft [overrides]``: the logic is in :mod:`rlvr.commands.sft`; this only wires Hydra (``conf/sft.yaml``)."""
    import hydra
    from omegaconf import DictConfig

    from rlvr.commands.sft import run_sft, store_sft_config

    store_sft_config()

    @hydra.main(version_base="1.3", config_path="conf", config_name="sft")
    def run(cfg: DictConfig) -> float:
        _quiet_libraries()
        try:
            trainer = run_sft(cfg)
        except RlvrError as exc:
            if _traceback_wanted():
                raise
            print(f"rlvr sft: error: {exc}", file=sys.stderr)
            sys.exit(1)
        print(
            f"rlvr: finished {trainer.step} SFT steps; model: {trainer.run_dir / 'final'} "
            f"(rlvr train model=hf model.name_or_path={trainer.run_dir / 'final'})"
        )
        return 0.0

    sys.argv = ["rlvr sft", *args]
    try:
        run()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


EVAL_HELP = """usage: rlvr eval [RUN_DIR] [num_samples=4] [limit=0] [batch_prompts=16] [output=FILE] [--samples-out FILE]
                 [checkpoint=DIR] [key=value ...]

Held-out accuracy (greedy, with a Wilson 95% interval), sampled pass@1 (bootstrap 95% interval), pass@k and
maj@k for k = 1, 2, 4, ... up to num_samples. RUN_DIR (or RUN_DIR/final, or a checkpoint) reuses the run's
model, task and correctness check (task.correct) from its config.json; key=value overrides apply on top
(e.g. task.correct=math_answer, task.max_eval_rows=100). Without RUN_DIR the config is composed as for
`rlvr train` (e.g. model=qwen2.5-3b-instruct task=gsm8k). --samples-out writes one JSON line per completion.
See docs/evaluation.md."""
EVAL_OPTIONS = {
    "checkpoint": "",
    "num_samples": "4",
    "limit": "0",
    "output": "",
    "batch_prompts": "16",
    "samples_out": "",
}


def cmd_eval(args: list[str]) -> int:
    """``rlvr eval [RUN_DIR] [checkpoint=DIR] [num_samples=4] [limit=0] [output=FILE] [samples_out=FILE] [overrides]``
    (``--samples-out FILE`` / ``--output FILE`` too); the logic is :func:`rlvr.commands.evaluation.run_eval`."""
    from rlvr.commands.evaluation import find_run, run_eval, saved_choices

    opts = dict(EVAL_OPTIONS)
    overrides, positional = [], []
    rest = list(args)
    while rest:
        a = rest.pop(0)
        if a.startswith("--"):
            key, eq, value = a[2:].replace("-", "_").partition("=")
            if key not in opts:
                raise UsageError(
                    f"rlvr eval: unknown option {a.split('=', 1)[0]}; options: "
                    + ", ".join("--" + k.replace("_", "-") for k in opts)
                    + " (see rlvr eval --help)"
                )
            if not eq:
                if not rest:
                    raise UsageError(f"rlvr eval: {a} needs a value")
                value = rest.pop(0)
            opts[key] = value
        elif "=" in a and a.split("=", 1)[0] in opts:
            opts[a.split("=", 1)[0]] = a.split("=", 1)[1]
        elif "=" in a:
            overrides.append(a)
        else:
            positional.append(a)
    if len(positional) > 1:
        raise UsageError(f"rlvr eval: give at most one run directory (got {' '.join(positional)})")
    ints = {k: _int_option("eval", k, opts[k]) for k in ("num_samples", "limit", "batch_prompts")}
    where = positional[0] if positional else opts["checkpoint"]
    problem = check_overrides(saved_choices(find_run(where)[0] if where else None, overrides) + overrides)
    if problem:
        print(f"rlvr eval: {problem}", file=sys.stderr)
        return 2
    _quiet_libraries()
    result = run_eval(
        positional[0] if positional else "",
        overrides,
        checkpoint=opts["checkpoint"],
        num_samples=ints["num_samples"] or 0,
        limit=ints["limit"] or 0,
        batch_prompts=ints["batch_prompts"] or 16,
        output=opts["output"],
        samples_out=opts["samples_out"],
    )
    print(json.dumps(result, indent=2))
    return 0


# ----- plugins -----------------------------------------------------------------------------------------
def add_plugins_arguments(parser: argparse.ArgumentParser) -> None:
    from rlvr.core.hookspecs import KINDS

    parser.add_argument("--kind", choices=list(KINDS), help="list only this kind")


def cmd_plugins(args: argparse.Namespace) -> int:
    """``rlvr plugins``: every plugin by kind, its distribution and module; collisions, broken and disabled ones."""
    from rlvr.core.hookspecs import KINDS
    from rlvr.core.registry import DISABLE_ENV, registry

    reg = registry()
    for kind in KINDS:
        if args.kind and kind != args.kind:
            continue
        entries = reg.entries(kind)
        clashing = {e.qualified for found in reg.collisions(kind).values() for e in found}
        print(f"{kind} ({len(entries)})")
        for name in sorted(entries):
            e = entries[name]
            note = "  [name collision: select it as this distribution:name]" if name in clashing else ""
            print(
                f"  {name:<22} {e.source:<24} {e.module}"
                + (f"  — {e.spec.description}" if e.spec.description else "")
                + note
            )
    if reg.broken:
        print(f"broken ({len(reg.broken)}): skipped; fix or uninstall them, or list them in {DISABLE_ENV}")
        for b in reg.broken:
            print(f"  {b.entry_point:<40} {b.distribution:<24} {b.reason}")
    if reg.disabled:
        print(f"disabled by {DISABLE_ENV} ({len(reg.disabled)}): {', '.join(reg.disabled)}")
    return 0


# ----- show / report / export ----------------------------------------------------------------------------
def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rlvr train`")
    parser.add_argument("--last", type=int, default=1, metavar="K", help="the last K logged steps (default 1)")
    parser.add_argument("--step", type=int, default=None, metavar="N", help="only step N")
    parser.add_argument("--width", type=int, default=0, help="table width (default: the terminal's)")
    parser.add_argument("--max-lines", type=int, default=6, metavar="N", help="lines per cell (default 6)")
    parser.add_argument("--full", action="store_true", help="whole completions, no line limit")


def cmd_show(args: argparse.Namespace) -> int:
    from rlvr.commands.show import show

    print(
        show(
            args.run_dir,
            step=args.step,
            last=args.last or 1,
            width=args.width or 0,
            max_lines=0 if args.full else (args.max_lines or 0),
        )
    )
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="RUN_DIR",
        help="a run directory, a sweep directory (multirun/<date>/<time>) or several run directories",
    )
    parser.add_argument(
        "--output",
        default="",
        metavar="DIR",
        help="where to write (default RUN_DIR/report, SWEEP_DIR/report, or <common parent>/compare-report)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    from rlvr.commands.compare import report

    if not args.paths:
        raise UsageError(
            "rlvr report: give a run directory (outputs/<date>/<time>), a sweep directory "
            "(multirun/<date>/<time>) or several run directories to compare"
        )
    print(report(args.paths, args.output or None))
    return 0


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or a completions .jsonl file")
    parser.add_argument("--rewards", default="", help="comma-separated rewards to audit (default: the run's)")
    parser.add_argument("--verifiers", default="", help="comma-separated independent checks (default: math_answer)")
    parser.add_argument(
        "--threshold",
        default="",
        metavar="NAME=VALUE,...",
        help="score above which a reward counts as paying (default: the midpoint of its range)",
    )
    parser.add_argument(
        "--max-fp",
        type=float,
        default=0.05,
        help="flag a reward whose false-positive rate's 95%% interval lies above this (default 0.05)",
    )
    parser.add_argument("--max-fn", type=float, default=0.05, help="the same for false negatives (default 0.05)")
    parser.add_argument("--last", type=int, default=0, metavar="N", help="only the last N logged steps (0 = all)")
    parser.add_argument("--output", default="", metavar="DIR", help="where audit.html / audit.json go")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a reward is flagged")


def cmd_audit(args: argparse.Namespace) -> int:
    """``rlvr audit RUN_DIR``: re-score logged completions and counterfactual probes (docs/reward-hacking.md)."""
    from rlvr.commands.audit import audit, parse_thresholds

    _quiet_libraries()
    split = (
        [x.strip() for x in args.rewards.split(",") if x.strip()],
        [x.strip() for x in args.verifiers.split(",") if x.strip()],
    )
    result, text = audit(
        args.run_dir,
        rewards=split[0] or None,
        verifiers=split[1] or None,
        output=args.output or None,
        thresholds=parse_thresholds(args.threshold),
        max_fp=args.max_fp,
        max_fn=args.max_fn,
        last=args.last,
    )
    print(text)
    print(f"\nrlvr audit: wrote {result.html_path} and {result.json_path}")
    return 3 if args.strict and result.flagged else 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (its final/) or a model directory")
    parser.add_argument("--format", default="gguf", choices=["gguf"], help="output format (default gguf)")
    parser.add_argument("--type", default="f16", choices=["f16", "q8_0"], help="weight type (default f16)")
    parser.add_argument("--output", default="", metavar="FILE", help="output file (default RUN_DIR/<name>.gguf)")
    parser.add_argument("--pre", default="", help="llama.cpp pre-tokenizer name, when it cannot be detected")


def cmd_export(args: argparse.Namespace) -> int:
    from rlvr.commands.export import export

    _quiet_libraries()
    path = export(args.run_dir, fmt=args.format, outtype=args.type, output=args.output or None, pre=args.pre or None)
    size = path.stat().st_size / 2**20
    print(
        f"rlvr export: wrote {path} ({size:.1f} MiB, {args.type}); run it with llama.cpp "
        f"(llama-cli -m {path}) or Ollama (a Modelfile with: FROM {path})"
    )
    return 0


COMMANDS: list[Command] = [
    Command(
        "train",
        "run GRPO (Hydra overrides: rlvr train loss=dr_grpo trainer.lr=1e-5; -m for sweeps; --cfg job)",
        cmd_train,
        None,
        TRAIN_HELP,
    ),
    Command(
        "eval",
        "held-out accuracy, pass@k and maj@k of a model, a run or a checkpoint: rlvr eval [RUN_DIR] [key=value ...]",
        cmd_eval,
        None,
        EVAL_HELP,
    ),
    Command("sft", "supervised fine-tuning before RL (Hydra overrides, like train)", cmd_sft, None, SFT_HELP),
    Command(
        "plugins", "list every discovered plugin by kind and where it came from", cmd_plugins, add_plugins_arguments
    ),
    Command("show", "the latest sampled completions of a run as a table", cmd_show, add_show_arguments),
    Command(
        "report",
        "plots + one HTML page for a run, or a table and overlaid plots for a sweep or several runs",
        cmd_report,
        add_report_arguments,
    ),
    Command("export", "the trained model as GGUF (llama.cpp, Ollama)", cmd_export, add_export_arguments),
    Command(
        "audit",
        "reward-hacking audit of a run: false positives / negatives of each reward on probes",
        cmd_audit,
        add_audit_arguments,
    ),
]


# ----- helpers for commands that parse their own raw arguments ---------------------------------------------
def parse_options(
    command: str, args: list[str], options: dict[str, str], flags: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, Any]]:
    """``--name value`` / ``--name=value`` options and ``--flag`` switches; returns (positionals, values).

    For commands registered with ``add_arguments=None``; prefer argparse for new commands."""
    values: dict[str, Any] = dict(options)
    values.update({f: False for f in flags})
    positional: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            key = name.replace("-", "_")
            if key in flags and not eq:
                values[key] = True
            elif key in options:
                if not eq:
                    if i + 1 >= len(args):
                        raise UsageError(f"rlvr {command}: --{name} needs a value")
                    i += 1
                    value = args[i]
                values[key] = value
            else:
                known = [f"--{k.replace('_', '-')}" for k in [*options, *flags]]
                close = difflib.get_close_matches(f"--{name}", known, n=1)
                raise UsageError(
                    f"rlvr {command}: unknown option --{name}."
                    + (f" Did you mean {close[0]}?" if close else "")
                    + f" Options: {', '.join(known)}"
                )
        else:
            positional.append(a)
        i += 1
    return positional, values


def _one_run_dir(command: str, positional: list[str]) -> str:
    if len(positional) != 1:
        raise UsageError(
            f"rlvr {command}: give one run directory, e.g. rlvr {command} outputs/2026-11-25/10-00-00"
            + (f" (got {len(positional)}: {' '.join(positional)})" if positional else "")
        )
    return positional[0]


def _int_option(command: str, name: str, value: Any) -> Optional[int]:
    if value in ("", None):
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"rlvr {command}: {name} must be an integer, got {value!r}") from None


# ----- main -----------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse, plus the closest option for a misspelt one (``--lats`` -> ``Did you mean --last?``)."""

    def error(self, message: str) -> Any:  # exits with code 2
        if "unrecognized arguments" in message:
            known = [o for o in self._option_string_actions if o.startswith("--")]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1)
                if word.startswith("-") and close:
                    message += f". Did you mean {close[0]}?"
                    break
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    parser = Parser(
        prog="rlvr",
        description="Reinforcement learning from verifiable rewards (GRPO and variants).",
        epilog="`rlvr <command> --help` describes a command. "
        "Exit codes: 0 done, 2 bad command line or config (nothing started), "
        "1 the run failed.",
    )
    from rlvr import __version__

    parser.add_argument("--version", action="version", version=f"rlvr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for cmd in COMMANDS:
        if cmd.add_arguments is None:
            p = sub.add_parser(
                cmd.name,
                help=cmd.help,
                description=cmd.description,
                add_help=False,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            p.usage = argparse.SUPPRESS
        else:
            p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
            cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
        SUBPARSERS[cmd.name] = p
    return parser


def _silence_stdout() -> None:
    """After a closed pipe (``rlvr show | head``): send the rest to /dev/null so that exiting does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def run_command(cmd: Command, rest: list[str], parser: argparse.ArgumentParser) -> int:
    """Parse ``rest`` for ``cmd`` and run it; returns the exit code (RlvrError and BrokenPipeError propagate)."""
    if cmd.add_arguments is None:
        if any(a in ("-h", "--help") for a in rest):
            print(cmd.description or cmd.help)
            return 0
        return cmd.run(rest)
    return cmd.run(SUBPARSERS[cmd.name].parse_args(rest))


def main(argv: Optional[list[str]] = None) -> None:
    """The ``rlvr`` console script."""
    set_env_defaults()
    import warnings

    warnings.formatwarning = one_line_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    by_name = {c.name: c for c in COMMANDS}
    if not argv or argv[0] in ("-h", "--help", "help", "--version"):
        if argv and argv[0] == "help" and len(argv) > 1 and argv[1] in by_name:
            argv = [argv[1], "--help"]
        else:
            if argv[:1] == ["--version"]:
                parser.parse_args(argv)
            parser.print_help(sys.stdout if argv else sys.stderr)
            sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in by_name:
        close = difflib.get_close_matches(command, list(by_name), n=1)
        print(
            f"rlvr: unknown command {command!r}."
            + (f" Did you mean {close[0]!r}?" if close else "")
            + f" Commands: {', '.join(by_name)} (rlvr --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    cmd = by_name[command]
    try:
        code = run_command(cmd, rest, parser)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (rlvr show | head): not an error
        _silence_stdout()
        code = 0
    except RlvrError as exc:
        if _traceback_wanted():
            raise
        print(f"rlvr {command}: error: {exc}", file=sys.stderr)
        code = 2 if isinstance(exc, UsageError) else 1
    sys.exit(code)
