"""Out of GPU memory (simulated on the CPU): the whole state is saved and resumes, a
half-applied update is not saved, and the error names the settings that use less memory."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
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


class RawAndEma(Callback):
    """The raw and EMA weights after every optimizer step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ema = next(c for c in trainer.callbacks if isinstance(c, WeightAveraging))
        self.raw = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.ema = {k[7:]: v.clone() for k, v in ema._average_model.state_dict().items()
                    if k.startswith("module.")}  # fmt: skip


def test_out_of_memory_in_validation_saves_the_raw_and_ema_weights_unswapped(tiny_cfg, monkeypatch):
    probe = RawAndEma()
    original_init = L.Trainer.__init__

    def init(self, *args, callbacks=None, **kwargs):
        original_init(self, *args, callbacks=[*(callbacks or []), probe], **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", init)
    original = DiffusionModule.validation_step

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking and self.current_epoch == 1:
            raise oom()  # with the EMA weights swapped in by Lightning's weight averaging
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DiffusionModule, "validation_step", validation_step)
    run_cfg = ("trainer.max_epochs=3", "trainer.limit_train_batches=2", "callbacks.ema.decay=0.5",
               "callbacks.sample_grid=null")  # fmt: skip
    cfg = tiny_cfg(*run_cfg)
    with pytest.raises(TrainingOutOfMemoryError, match="during validation") as err:
        run(cfg)
    assert "callbacks.sample_grid.n_per_class" in str(err.value)
    ckpt = load_checkpoint(err.value.checkpoint)
    assert ckpt["global_step"] == 4
    assert any(not torch.equal(probe.raw[k], probe.ema[k]) for k in probe.raw)
    for k in probe.raw:
        torch.testing.assert_close(ckpt["current_model_state"][k], probe.raw[k])
        torch.testing.assert_close(ckpt["state_dict"][k], probe.ema[k])

    monkeypatch.setattr(DiffusionModule, "validation_step", original)
    resumed = tiny_cfg(*run_cfg, f"ckpt_path={err.value.checkpoint}", name="resumed")
    run(resumed)
    last = load_checkpoint(Path(resumed.paths.output_dir) / "checkpoints/last.ckpt")
    assert last["global_step"] == 6 and last["epoch"] == 2
