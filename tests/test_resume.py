"""Exact resume: a run stopped by SIGTERM mid-epoch and resumed matches an uninterrupted run;
`ckpt_path=last` and stable run folders; data position; refusal of another data split."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONF_DIR
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.data import _update_dataloader
from omegaconf import OmegaConf
from torch.utils.data import DistributedSampler

from facediff.checkpoint import CheckpointError, check_resumable, load_checkpoint
from facediff.data.balanced_sampler import BalancedSampler
from facediff.data.build import build_datamodule
from facediff.data.resumable import ResumableDataLoader, SeededRandomSampler
from facediff.lightning.optim import schedule_change
from facediff.lightning.preemption import Preempted
from facediff.lightning.resume import ResumeError, resolve_ckpt_path
from facediff.lightning.training import run


class SignalAt(Callback):
    """Sends `signum` to this very process at the end of training step `step`."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def add_callbacks(monkeypatch: pytest.MonkeyPatch, *extra: Callback) -> None:
    """Every Trainer built from now on gets `extra` after the configured callbacks."""
    original = L.Trainer.__init__

    def init(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), *extra], **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", init)


def losses(run_dir: Path) -> tuple[list[int], list[float]]:
    history = json.loads((run_dir / "loss_curves.json").read_text())
    return history["train_steps"], history["train_loss"]


# 38 training images in batches of 8: 4 batches an epoch, so step 6 is the middle of epoch 1.
RUN = (
    "trainer.max_epochs=-1",
    "trainer.max_steps=10",
    "callbacks.sample_grid=null",
    "callbacks.ema.decay=0.8",
    "optim.scheduler.warmup_steps=3",
)


def test_run_killed_mid_epoch_and_resumed_matches_an_uninterrupted_run(
    tiny_cfg, monkeypatch, caplog
):
    whole = tiny_cfg(*RUN, name="whole")
    # The first run over fresh demo data builds its caches, which draws from the global random
    # stream after seeding; build them first so that both runs below start alike.
    warm_up = build_datamodule(OmegaConf.to_container(whole.data, resolve=True))
    warm_up.prepare_data()
    run(whole)

    killed = tiny_cfg(*RUN, name="killed")
    with monkeypatch.context() as patch:
        add_callbacks(patch, SignalAt(6))
        with pytest.raises(Preempted) as stop:
            run(killed)
    assert stop.value.code == 128 + signal.SIGTERM
    run_dir = Path(killed.paths.output_dir)
    saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 6 and saved["epoch"] == 1
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 2}
    ]

    with caplog.at_level(logging.WARNING):
        run(tiny_cfg(*RUN, "ckpt_path=last", name="killed"))  # same folder: resumes last.ckpt
    assert "learning-rate schedule spanned" not in caplog.text  # the same length: exact

    steps, resumed = losses(run_dir)
    whole_steps, uninterrupted = losses(Path(whole.paths.output_dir))
    assert steps == whole_steps == list(range(1, 11))
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(uninterrupted))
    end = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    reference = load_checkpoint(Path(whole.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert end["global_step"] == reference["global_step"] == 10
    for key in ("state_dict", "current_model_state"):  # EMA and raw weights
        torch.testing.assert_close(end[key], reference[key])
    torch.testing.assert_close(end["optimizer_states"], reference["optimizer_states"])
    assert end["lr_schedulers"] == reference["lr_schedulers"]
    assert end["facediff"]["schedule_steps"] == 10

    # A longer resume lays the schedule over the new length: said, with the jump it makes.
    longer = [*RUN[:1], "trainer.max_steps=14", *RUN[2:], "ckpt_path=last"]
    with caplog.at_level(logging.WARNING):
        run(tiny_cfg(*longer, name="whole"))
    assert "Resuming at step 10 a run whose learning-rate schedule spanned 10 steps, now 14" in (
        caplog.text
    )


def test_schedule_change_names_the_learning_rates_before_and_after():
    assert schedule_change(10, 10, 10, 3, 0.0, 1e-3) is None
    text = schedule_change(10, 10, 20, 3, 0.0, 1e-3)  # the end of the cosine, then its middle
    assert "goes from 0 to 0.000637 at this step" in text and "warm restart" in text


# ------------------------------------------------------------------------- data position
class Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def epoch_batches(loader: ResumableDataLoader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    return [b.tolist() for b in loader]


def make_sampler(kind: str, dataset: Items, seed: int = 3):
    if kind == "shuffle":
        return SeededRandomSampler(dataset, seed=seed)
    return BalancedSampler([i % 3 for i in range(len(dataset))], seed=seed)


@pytest.mark.parametrize("kind", ["shuffle", "balanced"])
def test_loader_resumes_at_the_saved_batch_of_the_saved_epoch(kind):
    dataset = Items(23)
    loader = ResumableDataLoader(dataset, batch_size=4, sampler=make_sampler(kind, dataset))
    full = epoch_batches(loader, 2)
    assert len(full) == len(loader) == 6
    assert full != epoch_batches(loader, 3)  # each epoch its own order
    assert full == epoch_batches(loader, 2)  # ... depending on the epoch only

    loader.sampler.set_epoch(2)
    seen = []
    for batch in loader:
        seen.append(batch.tolist())
        if len(seen) == 4:
            state = loader.state_dict()
            break
    assert state == {"epoch": 2, "batches": 4}

    fresh = ResumableDataLoader(dataset, batch_size=4, sampler=make_sampler(kind, dataset))
    fresh.load_state_dict(state)
    assert epoch_batches(fresh, 2) == full[4:]  # the rest of the epoch, nothing loaded twice
    assert fresh.state_dict() == {"epoch": 2, "batches": 6}
    assert epoch_batches(fresh, 3) == epoch_batches(loader, 3)  # the skip was for one pass

    ended = ResumableDataLoader(dataset, batch_size=4, sampler=make_sampler(kind, dataset))
    ended.load_state_dict({"epoch": 2, "batches": 6})  # saved at the end of epoch 2
    assert epoch_batches(ended, 3) == epoch_batches(loader, 3)


def test_plain_loops_get_a_fresh_order_each_pass():
    dataset = Items(20)
    loader = ResumableDataLoader(dataset, batch_size=4, sampler=SeededRandomSampler(dataset))
    assert [b.tolist() for b in loader] != [b.tolist() for b in loader]


def test_loader_resumes_each_ddp_rank_within_its_own_shard():
    dataset = Items(40)
    plain = ResumableDataLoader(dataset, batch_size=4, sampler=SeededRandomSampler(dataset))
    shards = []
    for rank in (0, 1):
        # Lightning re-creates the loader with a DistributedSampler under DDP.
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, seed=5)
        loader = _update_dataloader(plain, sampler)
        assert isinstance(loader, ResumableDataLoader) and loader.sampler is sampler
        full = epoch_batches(loader, 1)
        loader.load_state_dict({"epoch": 1, "batches": 2})
        assert epoch_batches(loader, 1) == full[2:]
        shards.append({i for batch in full for i in batch})
    assert not shards[0] & shards[1]


# ----------------------------------------------------------------------- ckpt_path and folders
def touch(path: Path, age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_ckpt_path_last_picks_the_newest_checkpoint_of_the_run_folder(tmp_path, caplog):
    run_dir = tmp_path / "outputs/train/my-run"
    assert resolve_ckpt_path(None, run_dir) is None  # a fresh run in a fresh folder
    assert resolve_ckpt_path("last", run_dir) is None  # set-and-forget: nothing to resume yet
    assert "no checkpoint" in caplog.text and "run_name" in caplog.text

    last = touch(run_dir / "checkpoints/last.ckpt", age_s=60)
    touch(run_dir / "checkpoints/best-epoch0001-step0000010.ckpt")  # never picked by `last`
    assert resolve_ckpt_path("last", run_dir) == str(last)
    hpc = touch(run_dir / "hpc_ckpt_1.ckpt")  # Lightning's SLURM requeue checkpoint, newer
    assert resolve_ckpt_path("last", run_dir) == str(hpc)
    assert resolve_ckpt_path(str(last), tmp_path / "elsewhere") == str(last)

    with pytest.raises(ResumeError, match="ckpt_path=last"):
        resolve_ckpt_path(None, run_dir)  # a fresh run would overwrite them
    with pytest.raises(ResumeError, match="not supported"):
        resolve_ckpt_path("best", run_dir)


def test_run_name_gives_a_stable_run_folder():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["run_name=my-run"], return_hydra_config=True)
    assert cfg.hydra.run.dir == "outputs/train/my-run"


# ------------------------------------------------------------------------- the data split
def test_resume_refuses_a_checkpoint_of_another_data_split(tiny_checkpoint):
    hparams = load_checkpoint(tiny_checkpoint)["hyper_parameters"]
    data = hparams["data"]
    check_resumable(tiny_checkpoint, hparams)  # the same config resumes
    moved = {**data, "root": "/elsewhere/demo", "num_workers": 4, "batch_size": 3}
    check_resumable(tiny_checkpoint, {**hparams, "data": moved})  # what does not move images
    changes = {
        "seed": data["seed"] + 1,
        "split": {"train": 0.7, "val": 0.15, "test": 0.15},
        "classes": ["hat", "beard"],
        "dedupe": not data["dedupe"],
        "near_duplicates": None,  # a checkpoint from before the setting has none
        "demo": {**data["demo"], "seed": 9},
    }
    for key, value in changes.items():
        with pytest.raises(CheckpointError, match=f"data.{key} differs"):
            check_resumable(tiny_checkpoint, {**hparams, "data": {**data, key: value}})
    with pytest.raises(CheckpointError, match="does not record its data config"):
        check_resumable(tiny_checkpoint, {**hparams, "data": None})
