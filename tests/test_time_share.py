"""The callbacks' wall-time cap (facediff.lightning.time_share) and its use in training."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from facediff.lightning.time_share import TimeShare
from facediff.lightning.training import run


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_share_allows_a_call_only_within_its_share():
    clock = FakeClock()
    share = TimeShare(0.1, clock=clock)
    share.start()
    assert share.allows()  # nothing spent, no estimate yet
    with share.charge():
        clock.now += 2.0  # a 2 s call at t=0
    clock.now = 10.0  # 2 s spent + 2 s estimate > 10% of 10 s
    assert not share.allows()
    clock.now = 40.0  # 4 s <= 10% of 40 s
    assert share.allows()
    with share.charge(one_off=True):
        clock.now += 20.0  # a one-off set-up costs but does not change the estimate
    assert share.spent == pytest.approx(22.0) and share.last_cost == pytest.approx(2.0)
    assert share.calls == 1
    assert "1 calls" in share.summary()


def test_no_limit_and_bad_shares():
    assert TimeShare(None).allows()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="max_time_share"):
            TimeShare(bad)


def test_sample_grid_skips_cadence_points_beyond_its_share_but_draws_the_final(tiny_cfg, caplog):
    cfg = tiny_cfg(
        "trainer.max_epochs=3",
        "callbacks.sample_grid.every_n_epochs=1",
        "callbacks.sample_grid.max_time_share=0.001",
    )
    with caplog.at_level(logging.INFO, logger="facediff.lightning.callbacks"):
        run(cfg)
    names = {p.name for p in (Path(cfg.paths.output_dir) / "samples").glob("*.png")}
    epoch_grids = {n for n in names if n.startswith("epoch") and n.count("-") == 1}
    # Even the first cadence point is skipped: its cost, estimated from one timed network
    # evaluation times the sampler's steps, would pass 0.1% of the run.
    assert not epoch_grids, names
    assert "final.png" in names, names
    assert "sample_grid: skipped at epoch" in caplog.text
    assert "3 skipped" in caplog.text


def test_figures_sample_with_cudnn_autotuning_off_and_restore_it():
    import torch

    from facediff.lightning.callbacks import without_cudnn_autotune

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True  # conf/trainer/gpu.yaml's setting
        with without_cudnn_autotune():
            assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.benchmark is True
        with pytest.raises(RuntimeError), without_cudnn_autotune():
            raise RuntimeError("a failed figure")
        assert torch.backends.cudnn.benchmark is True  # restored on errors too
    finally:
        torch.backends.cudnn.benchmark = before


EVAL_METRICS_EVERY_EPOCH = (
    "callbacks.eval_metrics={_target_: facediff.lightning.eval_callback.EvalMetrics,"
    " cache_dir: ${paths.cache_dir}, every_n_epochs: 1, n_per_class: 2, kid_subset_size: 2,"
    " max_time_share: null, classifier: {epochs: 1, lr: 1.0e-3, widths: [8, 16], seed: 11},"
    " sampling: {sampler: dpmpp, steps: 2, guidance: 1.0, eta: 1.0, seed: 0, spacing: trailing,"
    " precision: fp32}}"
)


@pytest.mark.parametrize(
    "callbacks",
    [
        # the time cap estimates the first call (a network evaluation on random input), then skips
        ("callbacks.sample_grid.every_n_epochs=1", "callbacks.sample_grid.max_time_share=0.001"),
        # the evaluation classifier is trained at the start (it reseeds torch; seed 11: no other
        # test caches this one) and metrics sampled
        ("callbacks.sample_grid=null", EVAL_METRICS_EVERY_EPOCH),
    ],
    ids=["capped-figures", "eval-metrics"],
)
def test_callbacks_never_change_the_training_runs_random_draws(tiny_cfg, callbacks):
    import torch

    from facediff.checkpoint import load_checkpoint

    def weights(*overrides: str, name: str) -> dict[str, torch.Tensor]:
        cfg = tiny_cfg("trainer.max_epochs=2", *overrides, name=name)
        run(cfg)
        ckpt = load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
        return ckpt["current_model_state"]

    plain = weights("callbacks.sample_grid=null", name="plain")
    with_callbacks = weights(*callbacks, name="with_callbacks")
    assert plain.keys() == with_callbacks.keys()
    for key in plain:
        assert torch.equal(plain[key], with_callbacks[key]), key
