"""Training checkpoints: one file with everything a run needs to continue exactly where it stopped.

The payload (:class:`~vitquant.qat.trainer.QATTrainer` builds it) holds the step, the training
model's state (latent weights, LSQ steps, IRM parameters and running statistics), the optimizer's
state, the loss history, the RNG states and what identifies the run (its settings, a fingerprint of
the calibrated model it started from, the number of processes and training images). The file is

    b"vitquant-qat-checkpoint 1\\n" + sha256(payload).hexdigest() + b"\\n" + payload

with the payload written by ``torch.save`` and read back with ``weights_only=True`` (no code runs on
loading). A missing, truncated or corrupted file, or one of another run, fails with
:class:`~vitquant.errors.CheckpointError` naming the problem. Writing goes through a temporary file
renamed into place, so an interrupted write leaves the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from vitquant.errors import CheckpointError

MAGIC = b"vitquant-qat-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` (atomically: a temporary file, then a rename)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    header = MAGIC + f" {VERSION}\n".encode() + hashlib.sha256(data).hexdigest().encode() + b"\n"
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from exc


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of the checkpoint at ``path``, its integrity checked (CPU tensors)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist (nothing to resume)") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    first, _, rest = raw.partition(b"\n")
    digest, _, data = rest.partition(b"\n")
    if not first.startswith(MAGIC + b" "):
        raise CheckpointError(f"{path} is not a vitquant training checkpoint")
    if first != MAGIC + f" {VERSION}".encode():
        raise CheckpointError(f"checkpoint {path} has format {first[len(MAGIC) + 1:].decode(errors='replace')!r}; "
                              f"this vitquant reads version {VERSION}")
    if hashlib.sha256(data).hexdigest().encode() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated (SHA-256 mismatch)")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler raises, the file is unusable
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or "step" not in payload or "run" not in payload:
        raise CheckpointError(f"checkpoint {path} lacks its step or run description")
    return payload


def check_same_run(path: Path, written: dict[str, Any], now: dict[str, Any]) -> None:
    """:class:`CheckpointError` naming every entry of the run description that differs."""
    differ = [k for k in sorted(set(written) | set(now)) if written.get(k) != now.get(k)]
    if differ:
        details = "; ".join(f"{k}: {_short(written.get(k))} in the checkpoint, {_short(now.get(k))} now" for k in differ)
        raise CheckpointError(f"checkpoint {path} was written by a different run ({details})")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
