"""The loss-curve figure every run folder holds (facediff.lightning.loss_curves)."""

import json
from pathlib import Path

from PIL import Image

from facediff.lightning.loss_curves import moving_average
from facediff.lightning.training import run


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([], 3) == []


def test_every_run_folder_holds_its_loss_curves(tiny_cfg):
    cfg = tiny_cfg("trainer.max_epochs=2", "callbacks.sample_grid=null")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    history = json.loads((out / "loss_curves.json").read_text())
    n_steps = len(history["train_loss"])
    assert n_steps > 0 and history["train_steps"] == list(range(1, n_steps + 1))
    assert [v["step"] for v in history["val"]] == [n_steps // 2, n_steps]
    assert all(len(v["per_t"]) == cfg.module.val_timesteps for v in history["val"])
    assert all(v["loss"] > 0 and v["steps_per_sec"] > 0 for v in history["val"])
    assert history["val"][0]["images_per_sec"] > history["val"][0]["steps_per_sec"]
    with Image.open(out / "loss_curves.png") as image:
        assert image.width > 600 and image.height > 250
