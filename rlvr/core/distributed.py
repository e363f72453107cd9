"""Multi-process training on torch.distributed: one process per device, launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` reads them and joins the process group (gloo on the CPU, NCCL on GPUs). Run as one
plain process, every helper here is the identity, so the trainer reads the same either way.

How the trainer splits a step over W ranks:

- every rank draws the same B prompts (the sampler is seeded identically) and generates only the
  groups of its contiguous slice (:meth:`Dist.groups`); a group's sampling seed is a function of
  (seed, step, global group index), so its completions do not depend on W;
- the rewards of the whole batch are gathered to every rank and the advantages computed on the
  whole batch, so group and batch scaling give what one process gives;
- the loss normalisers (sequences, active tokens) are global totals; DDP and FSDP2 *average*
  gradients over the W ranks, so each rank back-propagates W × its share of the step loss;
- rank 0 writes logs, configs and checkpoints; with FSDP2 every rank writes its shard of a
  ``torch.distributed.checkpoint`` and rank 0 the rest.

The training forward pass goes through :class:`LogprobModule` (the policy model's completion
log-probs as a module's ``forward``) wrapped in DDP or FSDP2, so their hooks see it; generation and
the no-grad passes use the unwrapped model (``Policy.model``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from rlvr.core.errors import ConfigError, MissingDependencyError, RunError
from rlvr.modeling.shared_prompt import grouped_completion_logprobs

STRATEGIES = ("ddp", "fsdp")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class Dist:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    device: Optional[torch.device] = None  # this rank's device: a model the plugin left on the CPU moves there
    _owns_group: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def groups(self, num_groups: int) -> slice:
        """This rank's contiguous slice of the ``num_groups`` groups (sizes differ by at most one)."""
        base, extra = divmod(num_groups, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (``[obj]`` in one process). Small objects only (pickled)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, value: float) -> float:
        """Sum of a number over the ranks (float64)."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return float(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group if :func:`setup` joined it."""
        if self._owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._owns_group = False

    def _comm_device(self) -> torch.device:
        return self.device if (self.backend == "nccl" and self.device is not None) else torch.device("cpu")


def setup(backend: str = "auto", timeout_s: int = 1800) -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), or return the one-process Dist.

    ``backend``: ``auto`` (NCCL when CUDA is available, else gloo), ``gloo`` or ``nccl``. With CUDA each
    rank uses ``cuda:LOCAL_RANK``. A process group the caller already initialised is used as it is.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"trainer.dist_backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    if os.environ.get("RLVR_DIST_FROM_SLURM") and "WORLD_SIZE" not in os.environ:
        _export_slurm_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world <= 1 and not initialised:  # one process: the GPU when there is one
        return Dist(device=torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None)
    if not torch.distributed.is_available():
        raise RunError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not initialised:
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise ConfigError("trainer.dist_backend=nccl needs CUDA GPUs; use gloo on the CPU")
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    backend = str(torch.distributed.get_backend())
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return Dist(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        backend=backend,
        device=device,
        _owns_group=owns,
    )


def _export_slurm_env() -> None:
    """A SLURM job step of several tasks without torchrun (Hydra's submitit launcher, ``srun python -m rlvr``):
    set torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR = the first node, MASTER_PORT from
    the job id) from SLURM's, through submitit. Opted into with ``RLVR_DIST_FROM_SLURM=1``."""
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError as exc:
        raise MissingDependencyError(
            "RLVR_DIST_FROM_SLURM=1 needs submitit (pip install hydra-submitit-launcher), "
            "or launch the ranks with torchrun instead"
        ) from exc
    if "SLURM_JOB_ID" not in os.environ:
        raise RunError("RLVR_DIST_FROM_SLURM=1 outside a SLURM job: launch the ranks with torchrun instead")
    os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")  # submitit sets it in its own jobs; plain srun does not
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


class LogprobModule(nn.Module):
    """A causal LM's completion log-probs (:func:`rlvr.modeling.causal_lm.completion_logprobs`) as ``forward``.

    DDP and FSDP2 act through a module's ``forward``; the chunked log-prob path calls the decoder and the
    head directly, so this module is what they wrap. ``self.model`` is the policy model itself (shared
    parameters, no copy).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int, **kwargs: Any) -> Any:
        return grouped_completion_logprobs(self.model, input_ids, attention_mask, prompt_length, **kwargs)


def _is_4bit(model: nn.Module) -> bool:
    return any(type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in model.modules())


def wrap(model: nn.Module, dist: Dist, strategy: str = "ddp") -> Optional[nn.Module]:
    """The module the training forward/backward goes through: DDP or FSDP2 around :class:`LogprobModule`.

    Returns None in one process (the trainer then calls the log-prob path directly). FSDP2 shards each
    decoder layer (the classes in the model's ``_no_split_modules``) and the rest (embeddings, final
    norm, head) as the root; parameters, gradients and optimizer state are then sharded over the ranks.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"trainer.distributed={strategy!r}: choose ddp or fsdp")
    if not dist.enabled:
        return None
    module = LogprobModule(model)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [dist.device.index] if dist.device is not None and dist.device.type == "cuda" else None
        # no buffer broadcast in each forward (a collective): the buffers (rotary tables) are the same on every rank
        # from the seeded load, and ranks with fewer micro-batches run fewer forwards (uneven group splits)
        return DDP(module, device_ids=device_ids, broadcast_buffers=False)
    if _is_4bit(model):
        raise ConfigError(
            "trainer.distributed=fsdp does not shard bitsandbytes 4-bit weights; use DDP for QLoRA "
            "(the NF4 base already fits where its 16-bit weights do not)"
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(dist.device.type if dist.device is not None else "cpu", (dist.world_size,))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    layer_classes = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ConfigError(
            f"trainer.distributed=fsdp: cannot find the decoder layers of {type(base).__name__} "
            "(its _no_split_modules is empty)"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    root = fully_shard(module, mesh=mesh)
    # FSDP2 picks its root at the first forward; run one through the root now, so that generation
    # (which calls the inner model directly) never makes a decoder layer the root
    with torch.no_grad():
        device = dist.device or torch.device("cpu")
        root(  # type: ignore[operator]
            torch.zeros((1, 2), dtype=torch.long, device=device),
            torch.ones((1, 2), dtype=torch.long, device=device),
            1,
        )
    root.reshard()  # the root keeps its weights gathered after a forward; the optimizer must see the shards
    return root  # type: ignore[return-value]


def is_fsdp(module: Optional[nn.Module]) -> bool:
    if module is None:
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def unsharded(module: Optional[nn.Module]) -> Iterator[None]:
    """With FSDP2: all-gather the full weights for the block (generation calls the inner model token by
    token; ranks stop at different steps, so per-forward all-gathers could not match up). No-op otherwise."""
    if not is_fsdp(module):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in module.modules() if isinstance(m, FSDPModule)]  # type: ignore[union-attr]
    inner = [m for m in mods if m is not module]
    for m in mods:
        m.unshard()
    for m in inner:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in inner:
            m.set_reshard_after_forward(True, recurse=False)
        for m in mods:
            m.reshard()


def grad_sync(module: Optional[nn.Module], sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Context for one micro-batch's backward: gradients are reduced over the ranks only when ``sync``
    (the last micro-batch of an optimizer step); earlier ones accumulate locally."""
    if module is None:
        return contextlib.nullcontext()
    if is_fsdp(module):
        module.set_requires_gradient_sync(sync)  # type: ignore[operator]
        return contextlib.nullcontext()
    return contextlib.nullcontext() if sync else module.no_sync()  # type: ignore[operator]


# ----- FSDP2 state: distributed checkpoints and the consolidated final model -----------------------
SHARDED_DIR = "sharded"  # inside checkpoint-<step>/: the torch.distributed.checkpoint of model + optimizer


def _state_options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, **kw)


def save_sharded(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shard of the trainable weights and optimizer state to ``path`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer, options=_state_options())
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))


def load_sharded(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a :func:`save_sharded` checkpoint into the sharded module and optimizer (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer, options=_state_options())
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        module,
        optimizer,
        model_state_dict=state["model"],  # type: ignore[arg-type]
        optim_state_dict=state["optimizer"],  # type: ignore[arg-type]
        options=_state_options(strict=False),
    )  # frozen (base) weights are not in the checkpoint


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights gathered to rank 0 on the CPU, keyed as in ``Policy.model`` (a collective;
    other ranks get ``{}``). For a LoRA policy that is the adapter."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(module, options=_state_options(full_state_dict=True, cpu_offload=True))
    once = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}  # tied weights once
    prefix = "model."
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items() if k in once}  # type: ignore[misc]


def save_sharded_checkpoint(
    dist: Dist,
    run_dir: Path,
    step: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """``checkpoints/checkpoint-<step>/`` for FSDP2, written as atomically as the one-process checkpoint: every
    rank writes its shard into a temporary directory, rank 0 adds ``trainer_state.pt`` and the ``COMPLETE``
    marker and renames it into place (the file system must be shared by all nodes)."""
    import shutil

    from rlvr.core import checkpoint as ckpt_io

    root = Path(run_dir) / "checkpoints"
    final = root / f"{ckpt_io.PREFIX}{step}"
    tmp = root / f".tmp-{ckpt_io.PREFIX}{step}-sharded"
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    save_sharded(tmp / SHARDED_DIR, module, optimizer)
    dist.barrier()
    if dist.is_main:
        torch.save({**trainer_state, "rng": ckpt_io.rng_state(), "step": step}, tmp / "trainer_state.pt")
        (tmp / ckpt_io.MARKER).write_text(str(step))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in ckpt_io.list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final
