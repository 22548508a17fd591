"""Evaluation sharded over processes launched by ``torchrun`` (``torch.distributed``).

Each process (rank) evaluates its share of the batches (:func:`vitquant.data.shard_batches`: whole batches,
strided, so each batch holds the same images as in a single-process run), and every rank's
:class:`PairEvaluation` is gathered and merged exactly: integer counts, and the mean KL as the correctly
rounded sum of all per-image values. The merged numbers therefore equal a single-process run's whenever
each image's logits do (true on the CPU; a GPU library may pick other kernels for other batch shapes,
which the batch-aligned split avoids).

Without ``torchrun`` (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing here starts a process group and every
function is the identity of a one-process run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from vitquant.errors import ConfigError, NumericalError, VitQuantError
from vitquant.evaluation.evaluate import PairEvaluation

__all__ = [
    "DEVICES",
    "Shard",
    "check_same_everywhere",
    "current_shard",
    "exchange",
    "gather_pair",
    "model_fingerprint",
    "on_main",
    "resolve_device",
    "sharded_session",
]

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"${name} must be an integer, got {text!r}") from None


def current_shard() -> Shard:
    """The shard of this process from ``torchrun``'s ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (one process
    without them)."""
    shard = Shard(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if shard.world_size < 1 or not 0 <= shard.rank < shard.world_size or shard.local_rank < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK {shard.rank}, WORLD_SIZE {shard.world_size}, "
                          f"LOCAL_RANK {shard.local_rank}")
    return shard


def resolve_device(name: str, shard: Shard) -> torch.device:
    """``cpu``, or ``cuda``: the GPU of this process (``cuda:LOCAL_RANK``); :class:`ConfigError` if there is
    no such GPU."""
    if name not in DEVICES:
        raise ConfigError(f"unknown --device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to torch (torch.cuda.is_available() is False)")
    count = torch.cuda.device_count()
    if shard.local_rank >= count:
        raise ConfigError(f"--device cuda: process {shard.rank} wants GPU {shard.local_rank}, this node has {count}")
    return torch.device("cuda", shard.local_rank)


@contextmanager
def sharded_session(shard: Shard, device: torch.device) -> Iterator[Shard]:
    """Join the process group of ``shard`` (gloo on the CPU, nccl on GPUs) for the duration of the block, and
    leave it after; nothing for a one-process run or when the caller already joined one."""
    if not shard.sharded or dist.is_initialized():
        yield shard
        return
    if not dist.is_available():
        raise ConfigError("torch.distributed is not available in this torch build: run without torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=shard.rank, world_size=shard.world_size)
    log.debug("rank %d of %d joined the %s process group", shard.rank, shard.world_size, backend)
    try:
        yield shard
    finally:
        dist.destroy_process_group()


def exchange(value: T | VitQuantError, shard: Shard) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank. A rank that hands in an error instead makes
    every rank raise it (so no rank waits forever on one that failed)."""
    values: list[Any] = [value]
    if shard.sharded:
        values = [None] * shard.world_size
        dist.all_gather_object(values, value)
    for rank, item in enumerate(values):
        if isinstance(item, VitQuantError):
            if rank == shard.rank:
                raise item
            raise type(item)(f"process {rank} of {shard.world_size} failed: {item}")
    return values


def on_main(shard: Shard, action: Callable[[], T]) -> T:
    """``action()`` on rank 0 alone (writing a file); its result, or its user error, on every rank."""
    outcome: Any = None
    if shard.is_main:
        try:
            outcome = action()
        except VitQuantError as exc:
            outcome = exc
    return exchange(outcome, shard)[0]


def gather_pair(local: PairEvaluation | VitQuantError, shard: Shard) -> PairEvaluation:
    """The merged evaluation of all ranks' shares (see the module docstring), on every rank."""
    parts = exchange(local, shard)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    return merged


def model_fingerprint(model: nn.Module, config: dict[str, Any]) -> str:
    """sha256 of every tensor of ``model``'s state dict (name, dtype, shape, bytes) and of ``config``."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def check_same_everywhere(fingerprint: str, shard: Shard, what: str) -> None:
    """:class:`NumericalError` on every rank unless all ranks hand in the same ``fingerprint``."""
    prints = exchange(fingerprint, shard)
    differ = [rank for rank, p in enumerate(prints) if p != prints[0]]
    if differ:
        raise NumericalError(f"{what} differs between processes (ranks {differ} differ from rank 0): "
                             "the sharded report would not be one model's")
