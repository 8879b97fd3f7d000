"""`test=true`: after fit, the fixed-grid loss of the test split is logged as `test/loss`."""

import csv
import math
from pathlib import Path

from facediff.lightning.training import run


def test_test_true_logs_test_loss_not_val_loss(tiny_cfg):
    cfg = tiny_cfg(
        "test=true",
        "logger=csv",
        "optimized_metric=test/loss",
        "module.val_timesteps=3",
        "trainer.limit_train_batches=2",
        "callbacks.sample_grid=null",
    )
    metric = run(cfg)
    assert metric is not None and math.isfinite(metric)
    rows = list(csv.DictReader(next(Path(cfg.paths.output_dir).rglob("metrics.csv")).open()))
    test_rows = [r for r in rows if r.get("test/loss")]
    assert len(test_rows) == 1 and float(test_rows[0]["test/loss"]) == metric
    logged = {k for k, v in test_rows[0].items() if v}
    per_t = sorted(k for k in logged if k.startswith("test_t/"))
    assert len(per_t) == 3 and per_t[0] == "test_t/loss_t0000" and per_t[-1] == "test_t/loss_t0499"
    assert not any(k.startswith(("val/", "val_t/")) for k in logged), logged
    # The validation during fit still logs val/loss, and never test/.
    val_rows = [r for r in rows if r.get("val/loss")]
    assert val_rows and not any(r.get("test/loss") for r in val_rows)
