"""Training in several processes (DistributedDataParallel), as started by ``torchrun``.

``torchrun --nproc-per-node N -m napari_inkdetect train ...`` (or ``napari-inkdetect train
--gpus N``) runs N copies of one command. Each finds its place in torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and :func:`~napari_inkdetect.training.train`
does the rest:

- each rank trains on ``cuda:LOCAL_RANK`` (NCCL), or on the CPU (gloo: tests, debugging);
- ``batch_size`` is the global batch. Its tile positions are drawn from the ``(seed, step)``
  stream exactly as in one process, and rank r reads block r of them: the ranks see
  different tiles, together the tiles one process would see, and a resumed run sees them
  again. Augmentation draws from a per-rank seed;
- DDP averages the gradients, so a step equals one process accumulating N micro-batches of
  ``batch_size / N`` tiles. BatchNorm statistics are per rank unless ``sync_batchnorm``
  (CUDA only: torch's ``SyncBatchNorm`` has no CPU kernel);
- rank 0 alone validates, logs, writes checkpoints and yields progress events; the others
  wait for it at the next step's stop-flag all-reduce, and at the end of the run;
- the loss and the stop request are all-reduced every step, so a NaN loss or a stop ends all
  ranks at the same step. Out of memory ends the run (no batch halving: the ranks would
  disagree on the micro-batch); torchrun then stops the other ranks.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from napari_inkdetect.devices import resolve_device
from napari_inkdetect.errors import ChildCrashedError, ConfigError
from napari_inkdetect.training.config import TrainConfig

#: How long a rank waits for the others (rank 0 validating, saving) before giving up.
TIMEOUT = datetime.timedelta(minutes=60)
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class Distributed:
    """This process's place in a torchrun job; ``Distributed()`` is a plain single process,
    for which every method is the identity (or does nothing)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False
    device: torch.device | None = None

    @classmethod
    def from_env(cls) -> Distributed:
        """From torchrun's variables; a single process when they are not all set."""
        if not all(name in os.environ for name in _ENV):
            return cls()
        rank, world, local = (int(os.environ[name]) for name in _ENV)
        return cls(rank, world, local, active=True)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs, saves and reports."""
        return self.rank == 0

    def resolve_device(self, requested: str) -> torch.device:
        """``cuda:LOCAL_RANK`` (``auto``/``cuda`` where CUDA is available) or ``cpu``."""
        if not self.active:
            return resolve_device(requested)
        name = (requested or "auto").strip().lower()
        if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if name not in ("auto", "cuda"):
            raise ConfigError(
                f"device {requested!r} under torchrun: use auto, cuda or cpu (each process "
                "uses cuda:LOCAL_RANK; choose the GPUs with CUDA_VISIBLE_DEVICES)"
            )
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {self.local_rank} has no GPU: {torch.cuda.device_count()} visible"
            )
        return torch.device("cuda", self.local_rank)

    def local_batch(self, batch_size: int) -> int:
        """This rank's share of the global batch; refuses a batch that does not split."""
        if batch_size % self.world_size:
            raise ConfigError(
                f"batch_size {batch_size} is the global batch and does not split over "
                f"{self.world_size} processes; use a multiple of {self.world_size}"
            )
        return batch_size // self.world_size

    def shard(self, items: list) -> list:
        """Block ``rank`` of ``items`` (the global batch's tile positions)."""
        n = len(items) // self.world_size
        return items[self.rank * n : (self.rank + 1) * n]

    def rank_seed(self, seed: int) -> int:
        """The augmentation seed of this rank (``seed`` itself in a single process)."""
        if not self.active:
            return seed
        return int(np.random.SeedSequence([seed, self.rank, 2]).generate_state(1)[0])

    def sync_batchnorm(self, model: nn.Module, device: torch.device) -> nn.Module:
        """BatchNorm layers that share their batch statistics across ranks (CUDA only)."""
        if not self.active:
            return model  # one process: the statistics are already the whole batch's
        if device.type != "cuda":
            raise ConfigError(
                "sync_batchnorm needs CUDA GPUs: torch's SyncBatchNorm has no CPU kernel"
            )
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def start(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, gloo on the CPU) unless already joined.

        The group stays for the life of the process, and later runs reuse it: a new default
        group after ``destroy_process_group`` rendezvouses under the same store keys as the
        old one and can hang (seen with gloo under torchrun)."""
        self.device = device
        if not self.active or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)
        atexit.register(_leave_group)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` (which copies rank 0's weights to all ranks).

        ``find_unused_parameters``: the encoder's ``fc`` is kept for the checkpoint files
        but never used; its gradient stays None, as in one process."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world_size

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (a stop requested on one stops all)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- launching


def launch(nproc: int, argv: list[str], config: TrainConfig) -> int:
    """Run ``python -m napari_inkdetect *argv`` (training ``config``) in ``nproc`` processes,
    as ``torchrun --standalone`` does (rendezvous on a free local port); 0 when all end well.

    A failed process is one line (``ChildCrashedError``), not torchrun's traceback; rank 0
    has printed its own error by then."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    check_launch(nproc, config)
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "napari_inkdetect", *argv]
    )
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise ChildCrashedError(
            f"training process {rank} of {nproc} failed (exit code {failure.exitcode})"
        ) from None
    except SignalException:
        raise KeyboardInterrupt from None
    return 0


def check_launch(nproc: int, config: TrainConfig) -> None:
    """Refuse ``--gpus N`` with fewer GPUs visible (``--device cpu``: N CPU processes) and
    what every process would refuse, once, before starting them."""
    if Distributed.from_env().active:
        raise ConfigError("--gpus inside torchrun: run the command without --gpus")
    if nproc < 1:
        raise ConfigError(f"--gpus {nproc}: use 1 or more")
    Distributed(world_size=nproc).local_batch(config.batch_size)
    device = config.device.strip().lower()
    if device == "cpu":
        if config.sync_batchnorm:
            raise ConfigError("--sync-bn needs CUDA GPUs: SyncBatchNorm has no CPU kernel")
        return
    if device not in ("auto", "cuda"):
        raise ConfigError(f"--gpus with --device {device}: use auto, cuda or cpu")
    visible = torch.cuda.device_count()
    if visible < nproc:
        raise ConfigError(
            f"--gpus {nproc}: only {visible} CUDA GPU(s) visible (--device cpu runs {nproc} "
            "CPU processes with gloo, for testing)"
        )
