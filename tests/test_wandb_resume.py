"""One W&B run per run folder: a resumed run continues its W&B run (facediff.lightning.loggers)."""

from __future__ import annotations

from omegaconf import OmegaConf

from facediff.lightning.loggers import build_logger, wandb_run_id

WANDB = {"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "facediff",
         "name": "x", "id": None, "offline": True}  # fmt: skip


def logger_for(save_dir: str, **extra: object):
    return build_logger(OmegaConf.create({**WANDB, "save_dir": save_dir, **extra}))


def test_the_run_folder_fixes_the_wandb_run_id(tmp_path):
    first = logger_for(str(tmp_path / "run"))
    again = logger_for(str(tmp_path / "run"))
    other = logger_for(str(tmp_path / "other"))
    assert first._wandb_init["id"] == again._wandb_init["id"] == wandb_run_id(str(tmp_path / "run"))
    assert first._wandb_init["resume"] == "allow"
    assert other._wandb_init["id"] != first._wandb_init["id"]
    assert set(first._wandb_init["id"]) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def test_an_explicit_id_is_kept(tmp_path):
    logger = logger_for(str(tmp_path / "run"), id="my-run")
    assert logger._wandb_init["id"] == "my-run"
