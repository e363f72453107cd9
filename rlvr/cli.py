"""The ``rlvr`` command: train, eval, plugins (``python -m rlvr`` is the same)."""
from __future__ import annotations

import difflib
import json
import os
import re
import sys
from typing import Any, Optional

USAGE = """usage: rlvr <command> [key=value ...]

commands:
  train     run GRPO (Hydra overrides: rlvr train loss=dr_grpo trainer.lr=1e-5; -m for sweeps; --cfg job)
  sft       supervised fine-tuning on worked answers before GRPO (Hydra overrides; see docs/sft.md)
  eval      held-out accuracy of a model or checkpoint: rlvr eval [checkpoint=DIR] [task=...] [num_samples=4] [limit=0]
  plugins   list every discovered plugin by kind and where it came from
  show      the latest sampled completions of a run as a table: rlvr show RUN_DIR [--last K] [--step N] [--full]
  report    plots + one HTML page for a run, or runs compared: rlvr report RUN_DIR|SWEEP_DIR|RUN... [--output DIR]
  export    the trained model as GGUF (llama.cpp, Ollama): rlvr export RUN_DIR --format gguf [--type f16|q8_0] [--output FILE]
"""

GROUPS = ("model", "task", "reward", "loss", "engine", "trainer", "logger", "verifier")


class UsageError(Exception):
    pass


def _quiet_libraries() -> None:
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel-hub fallback notices
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _keys_at(node: Any) -> list[str]:
    from omegaconf import DictConfig

    return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []


def check_overrides(overrides: list[str]) -> Optional[str]:
    """Compose the config; on failure return an actionable message (closest key, valid keys)."""
    from hydra.errors import HydraException
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    from rlvr.core.config import compose

    plain = [o for o in overrides if not o.startswith(("hydra.", "hydra/", "+hydra"))]
    try:
        compose(plain)
        return None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        missing = re.search(r"Could not (?:load|find) '(\w+)/([^']+)'", str(exc))
        if missing:  # an unknown plugin / preset name in a config group: list the valid ones
            return unknown_choice(missing.group(1), missing.group(2))
        # which dotted key failed? compose with only the group choices and walk the key path
        groups = [o for o in plain if o.split("=", 1)[0].lstrip("+~").split(".")[0] in GROUPS and "." not in o.split("=", 1)[0]]
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
                    return (f"unknown config key {key!r}: {level} has no key {part!r}.{hint} "
                            f"Keys at {level}: {', '.join(keys)}. Use `rlvr train --cfg job` to see the whole config.")
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
        found.update(f.name[:-5] for f in resources.files("rlvr.conf").joinpath(group).iterdir() if f.name.endswith(".yaml"))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return sorted(found)


def unknown_choice(group: str, name: str) -> str:
    options = group_options(group)
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown {group} {name!r}.{hint} Available options in {group!r}: {', '.join(options) or '(none)'}. "
            "Run `rlvr plugins` to see every plugin and where it comes from.")


def cmd_train(args: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig

    from rlvr.core.config import store_plugin_configs

    store_plugin_configs()
    special = any(a in ("-m", "--multirun", "--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i") or
                  a.startswith(("--cfg", "--info", "--config", "-cp", "-cn")) for a in args)
    if not special:
        problem = check_overrides(args)
        if problem:
            print(f"rlvr train: {problem}", file=sys.stderr)
            return 2

    @hydra.main(version_base="1.3", config_path="conf", config_name="config")
    def run(cfg: DictConfig) -> float:
        from rlvr.core.trainer import Trainer

        from rlvr.core.trainer import ResumeConfigError, TrainingInterrupted

        _quiet_libraries()
        try:
            trainer = Trainer(cfg)
            metrics = trainer.train()
        except TrainingInterrupted as exc:
            print(f"rlvr train: {exc}", file=sys.stderr)
            sys.exit(130)
        except KeyboardInterrupt:
            print("rlvr train: interrupted; run the same command again to resume from the last checkpoint "
                  "(checkpoints/ in the run directory; trainer.save_steps sets how often one is written)",
                  file=sys.stderr)
            sys.exit(130)
        except ResumeConfigError as exc:
            print(f"rlvr train: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except (ValueError, FileNotFoundError, KeyError, ImportError, TypeError, OSError, RuntimeError) as exc:
            if os.environ.get("RLVR_TRACEBACK") or os.environ.get("HYDRA_FULL_ERROR"):
                raise
            print(f"rlvr train: error: {exc}", file=sys.stderr)
            sys.exit(1)
        if trainer.dist.is_main:
            print(f"rlvr: finished {trainer.step} steps; run directory: {trainer.run_dir} (checkpoint: {trainer.run_dir / 'final'})")
        reward = metrics.get("reward/mean")
        return float("nan") if reward is None else float(reward)

    sys.argv = ["rlvr train", *args]
    try:
        run()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def cmd_sft(args: list[str]) -> int:
    """``rlvr sft [overrides]``: the logic is in :mod:`rlvr.sft`; this only wires Hydra (config ``conf/sft.yaml``)."""
    import hydra
    from omegaconf import DictConfig

    from rlvr.sft import run_sft, store_sft_config

    store_sft_config()

    @hydra.main(version_base="1.3", config_path="conf", config_name="sft")
    def run(cfg: DictConfig) -> float:
        _quiet_libraries()
        try:
            trainer = run_sft(cfg)
        except (ValueError, FileNotFoundError, KeyError, ImportError, TypeError, OSError, RuntimeError) as exc:
            if os.environ.get("RLVR_TRACEBACK") or os.environ.get("HYDRA_FULL_ERROR"):
                raise
            print(f"rlvr sft: error: {exc}", file=sys.stderr)
            sys.exit(1)
        print(f"rlvr: finished {trainer.step} SFT steps; model: {trainer.run_dir / 'final'} "
              f"(rlvr train model=hf model.name_or_path={trainer.run_dir / 'final'})")
        return 0.0

    sys.argv = ["rlvr sft", *args]
    try:
        run()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def cmd_eval(args: list[str]) -> int:
    from rlvr.core import registry
    from rlvr.core.config import plugin_params
    from rlvr.core.evaluate import evaluate

    opts = {"checkpoint": "", "num_samples": "4", "limit": "0", "output": "", "batch_prompts": "16"}
    overrides = []
    for a in args:
        key = a.split("=", 1)[0]
        if key in opts and "=" in a:
            opts[key] = a.split("=", 1)[1]
        else:
            overrides.append(a)
    problem = check_overrides(overrides)
    if problem:
        print(f"rlvr eval: {problem}", file=sys.stderr)
        return 2
    from rlvr.core.config import compose, trainer_config

    _quiet_libraries()
    cfg = compose(overrides)
    task = registry.create("task", cfg.task.name, **plugin_params(cfg.task))
    engine = registry.create("engine", cfg.engine.name, **plugin_params(cfg.engine))
    policy = load_for_eval(cfg, opts["checkpoint"])
    tc = trainer_config(cfg.trainer)
    result = evaluate(policy, task, engine, num_samples=int(opts["num_samples"]), limit=int(opts["limit"]),
                      batch_prompts=int(opts["batch_prompts"]), seed=tc.seed)
    result = {"model": opts["checkpoint"] or cfg.model.name, "task": cfg.task.name, **result}
    print(json.dumps(result, indent=2))
    if opts["output"]:
        with open(opts["output"], "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def load_for_eval(cfg: Any, checkpoint: str) -> Any:
    """The configured model, or a checkpoint directory (full weights, or a LoRA adapter on the configured base)."""
    from pathlib import Path

    from rlvr.core import registry
    from rlvr.core.config import plugin_params

    if not checkpoint:
        return registry.create("model", cfg.model.name, **plugin_params(cfg.model))
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint={checkpoint!r}: no such directory (expected e.g. outputs/<date>/<time>/final)")
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        params = plugin_params(cfg.model)
        params["lora"] = False
        params["load_in_4bit"] = False
        base = registry.create("model", cfg.model.name, **params)
        base.model = PeftModel.from_pretrained(base.model, str(path))
        base.is_lora = True
        return base
    params = {k: v for k, v in plugin_params(cfg.model).items() if k in ("dtype",)}
    return registry.create("model", "hf", name_or_path=str(path.resolve()), **params)


def cmd_plugins(args: list[str]) -> int:
    from rlvr.core.hookspecs import KINDS
    from rlvr.core.registry import registry

    reg = registry()
    for kind in KINDS:
        entries = reg.entries(kind)
        print(f"{kind} ({len(entries)})")
        for name in sorted(entries):
            e = entries[name]
            print(f"  {name:<22} {e.source:<24} {e.module}" + (f"  — {e.spec.description}" if e.spec.description else ""))
    return 0


def parse_options(command: str, args: list[str], options: dict[str, str], flags: tuple[str, ...] = ()) -> tuple[list[str], dict[str, Any]]:
    """``--name value`` / ``--name=value`` options and ``--flag`` switches; returns (positionals, values)."""
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
                raise UsageError(f"rlvr {command}: unknown option --{name}." + (f" Did you mean {close[0]}?" if close else "")
                                 + f" Options: {', '.join(known)}")
        else:
            positional.append(a)
        i += 1
    return positional, values


def _one_run_dir(command: str, positional: list[str]) -> str:
    if len(positional) != 1:
        raise UsageError(f"rlvr {command}: give one run directory, e.g. rlvr {command} outputs/2026-11-25/10-00-00"
                         + (f" (got {len(positional)}: {' '.join(positional)})" if positional else ""))
    return positional[0]


def _int_option(command: str, name: str, value: Any) -> Optional[int]:
    if value in ("", None):
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"rlvr {command}: --{name} must be an integer, got {value!r}") from None


def cmd_show(args: list[str]) -> int:
    from rlvr.show import show

    positional, opts = parse_options("show", args, {"last": "1", "step": "", "width": "0", "max_lines": "6"}, ("full",))
    text = show(_one_run_dir("show", positional), step=_int_option("show", "step", opts["step"]),
                last=_int_option("show", "last", opts["last"]) or 1, width=_int_option("show", "width", opts["width"]) or 0,
                max_lines=0 if opts["full"] else (_int_option("show", "max-lines", opts["max_lines"]) or 0))
    print(text)
    return 0


def cmd_report(args: list[str]) -> int:
    from rlvr.compare import report

    positional, opts = parse_options("report", args, {"output": ""})
    if not positional:
        raise UsageError("rlvr report: give a run directory (outputs/<date>/<time>), a sweep directory "
                         "(multirun/<date>/<time>) or several run directories to compare")
    print(report(positional, opts["output"] or None))
    return 0


def cmd_export(args: list[str]) -> int:
    from rlvr.export import export

    positional, opts = parse_options("export", args, {"format": "gguf", "type": "f16", "output": "", "pre": ""})
    _quiet_libraries()
    path = export(_one_run_dir("export", positional), fmt=opts["format"], outtype=opts["type"],
                  output=opts["output"] or None, pre=opts["pre"] or None)
    size = path.stat().st_size / 2**20
    print(f"rlvr export: wrote {path} ({size:.1f} MiB, {opts['type']}); run it with llama.cpp "
          f"(llama-cli -m {path}) or Ollama (a Modelfile with: FROM {path})")
    return 0


COMMANDS = {"train": cmd_train, "sft": cmd_sft, "eval": cmd_eval, "plugins": cmd_plugins, "show": cmd_show, "report": cmd_report,
            "export": cmd_export}


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        print(f"rlvr: unknown command {command!r}." + (f" Did you mean {close[0]!r}?" if close else "") + "\n" + USAGE,
              file=sys.stderr)
        sys.exit(2)
    try:
        code = COMMANDS[command](rest)
    except UsageError as exc:
        print(f"{exc}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, FileNotFoundError, KeyError, ImportError, ModuleNotFoundError, TypeError, OSError) as exc:
        if os.environ.get("RLVR_TRACEBACK"):
            raise
        print(f"rlvr {command}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
