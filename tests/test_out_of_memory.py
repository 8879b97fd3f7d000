"""Out of GPU memory (simulated on the CPU): the whole state is saved and resumes, a
half-applied update is not saved, and the error names the settings that use less memory."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import Precision

from facediff.checkpoint import load_checkpoint
from facediff.lightning.module import DiffusionModule
from facediff.lightning.out_of_memory import TrainingOutOfMemoryError
from facediff.lightning.training import run

QUICK = ("trainer.max_steps=4", "trainer.max_epochs=-1", "callbacks.sample_grid=null")


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_in_a_training_step_saves_a_resumable_state(tiny_cfg, monkeypatch):
    original = DiffusionModule.training_step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 2:
            raise oom()
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DiffusionModule, "training_step", training_step)
    cfg = tiny_cfg(*QUICK)
    with pytest.raises(TrainingOutOfMemoryError) as err:
        run(cfg)
    message = str(err.value)
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
    for part in ("during training step", "Tried to allocate 20.00 GiB", "data.batch_size=8",
                 "data.image_size=16", "model.grad_checkpoint=true", "trainer.precision=",
                 "data.batch_size=4", "ckpt_path="):  # fmt: skip
        assert part in message, part
    saved = Path(cfg.paths.output_dir) / "checkpoints" / "oom-step0000002.ckpt"
    assert err.value.checkpoint == saved and saved.is_file()
    ckpt = load_checkpoint(saved)
    assert ckpt["global_step"] == 2 and ckpt["current_model_state"].keys() == ckpt[
        "state_dict"
    ].keys()  # fmt: skip

    monkeypatch.setattr(DiffusionModule, "training_step", original)
    resumed = tiny_cfg(*QUICK, f"ckpt_path={saved}", name="resumed")
    run(resumed)
    assert load_checkpoint(Path(resumed.paths.output_dir) / "checkpoints/last.ckpt")[
        "global_step"
    ] == 4  # fmt: skip


def test_out_of_memory_inside_the_update_saves_nothing(tiny_cfg, monkeypatch):
    calls = []
    original = Precision.clip_grad_by_norm

    def clip(self, optimizer, clip_val):
        calls.append(clip_val)
        if len(calls) == 3:
            raise oom()
        original(self, optimizer, clip_val)

    monkeypatch.setattr(Precision, "clip_grad_by_norm", clip)
    cfg = tiny_cfg(*QUICK)
    with pytest.raises(TrainingOutOfMemoryError, match="during optimizer update") as err:
        run(cfg)
    assert err.value.checkpoint is None and "last.ckpt" in str(err.value)
    assert not list((Path(cfg.paths.output_dir) / "checkpoints").glob("oom-*"))
