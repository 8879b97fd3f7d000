"""Checkpoint writes that a kill at any moment cannot corrupt.

Lightning's `TorchCheckpointIO` saves through `fsspec`'s transaction: it serialises the whole
checkpoint into memory, writes it to a temporary file made by `tempfile.mkstemp()` (in /tmp,
often another file system) and moves it over the target on commit. When /tmp is another file
system the move is a copy, so a kill during it leaves a truncated `last.ckpt`, and nothing is
synced to disk.

`AtomicCheckpointIO` writes the checkpoint straight into a uniquely named temporary file in the
target's own folder (`.<name>.tmp-XXXX`), flushes and fsyncs it, and renames it over the target
with `os.replace` (atomic on POSIX file systems), then fsyncs the folder. A reader therefore
sees either the previous complete checkpoint or the new complete one; a write that fails or is
interrupted removes its temporary file. `build_trainer` passes it to every Trainer, so
ModelCheckpoint, the preemption checkpoint and Lightning's SLURM `hpc_ckpt_*.ckpt` all go
through it. Remote paths (`s3://...`) keep Lightning's own writer.
"""

from __future__ import annotations

import logging
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from facediff.atomic import atomic_save

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are atomic (see the module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                "AtomicCheckpointIO.save_checkpoint does not take storage_options, got "
                f"{storage_options!r}; write a custom CheckpointIO plugin to pass them."
            )
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_save(checkpoint, path)  # facediff.atomic: temp file, fsync, rename


def _is_local(path: _PATH) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)
