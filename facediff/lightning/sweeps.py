"""What a sweep needs from one training job: its objective value and a name of its own."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

log = logging.getLogger(__name__)


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (`-m`, or `hparams_search=optuna`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def objective_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """`metrics[name]` (its last logged value) as a float: what train.py returns, and so what a
    sweeper optimises.

    A metric that was never logged (e.g. `eval/class_consistency` with the eval_metrics callback
    off) returns None; in a sweep (Hydra's multirun) with a warning naming the logged metrics,
    since the Optuna sweeper itself only reports "must be float-castable". A non-finite value
    is returned as it is (Optuna records that trial as failed).
    """
    if not name:
        return None
    value = metrics.get(name)
    if value is None:
        if not in_multirun():  # a single run returns to no sweeper: nothing to warn of
            return None
        log.warning(
            "optimized_metric=%s was never logged, so this job returns nothing to a sweeper. "
            "Logged: %s. Fix: pick one of those, or turn on what logs it (val/* need a "
            "validation: trainer.check_val_every_n_epoch or val_check_interval within the run; "
            "eval/* come from callbacks.eval_metrics, which should run in the last epoch: "
            "every_n_epochs dividing trainer.max_epochs).",
            name,
            ", ".join(sorted(metrics)) or "nothing",
        )
        return None
    result = float(value)
    if not math.isfinite(result):
        log.warning("optimized_metric=%s is %s in this job.", name, result)
    return result


def job_run_name() -> str | None:
    """A run name that tells this job apart from the others of its sweep and matches its folder:
    `<sweep folder>/<job number>` in a multirun (`multirun/<task>/<date>/<num>`), the run
    folder's name (`<date>`) otherwise; None outside Hydra."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{Path(str(hydra_cfg.sweep.dir)).name}/{hydra_cfg.job.num}"
    return Path(str(hydra_cfg.runtime.output_dir)).name
