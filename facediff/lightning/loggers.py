"""Experiment loggers from config: W&B (online if logged in, else offline), CSV, or none."""

from __future__ import annotations

import glob
import hashlib
import logging
import netrc
import os
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from facediff.lightning.sweeps import job_run_name

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    """True when W&B has credentials: WANDB_API_KEY, or `wandb login` (which writes ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
    return any(host.startswith(base.split("/")[0]) for host in hosts)


def wandb_run_id(run_dir: str) -> str:
    """A W&B run id derived from the absolute run folder (W&B ids allow [a-z0-9_-])."""
    digest = hashlib.sha256(os.path.abspath(run_dir).encode()).hexdigest()[:16]
    return f"facediff-{digest}"


def build_logger(cfg: DictConfig | None) -> Logger | bool:
    """Instantiate `cfg.logger`; `offline: auto` on a WandbLogger picks online iff logged in, a
    W&B run without a `name` is named after its Hydra job (`<sweep date>/<job num>`), and one
    without an `id` gets one from its run folder, resumable (`wandb_run_id`)."""
    if cfg is None:
        return False
    kwargs: dict[str, Any] = {}
    is_wandb = str(cfg.get("_target_", "")).endswith("WandbLogger")
    if is_wandb and cfg.get("name") is None:  # each job of a sweep its own, recognisable name
        kwargs["name"] = job_run_name()
    if is_wandb and cfg.get("id") is None and cfg.get("save_dir"):
        # One W&B run per run folder: a run resumed or requeued into its folder (ckpt_path=last)
        # continues its W&B run (WandbLogger passes resume="allow") instead of starting another.
        kwargs["id"] = wandb_run_id(str(cfg.save_dir))
    if is_wandb and cfg.get("offline") == "auto":
        env_mode = os.environ.get("WANDB_MODE")
        kwargs["offline"] = env_mode in ("offline", "dryrun") or (
            env_mode != "online" and not wandb_logged_in()
        )
        if kwargs["offline"]:
            log.warning(
                "W&B: not logged in, so this run is logged offline under %s/wandb. "
                "Sync it later with `wandb sync <run folder>` (printed at the end of the run), "
                "or run `wandb login` first; `logger=csv` or `logger=none` avoid W&B.",
                cfg.get("save_dir", "."),
            )
            if cfg.get("log_model"):
                log.warning("W&B: log_model needs an online run; checkpoints stay on disk only.")
                kwargs["log_model"] = False
    return instantiate(cfg, **kwargs)


def finish_loggers(loggers: list[Logger]) -> None:
    """Close W&B runs (so the next job of a multirun gets its own) and say how to sync them."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        # The logger's own run, not only the global one: finishing another (an earlier job's run
        # left open) would leave this run's records unflushed. Lightning keeps it in _experiment.
        run = getattr(logger, "_experiment", None) or wandb.run
        if run is None:
            continue
        run_dir, run_id = os.path.dirname(run.dir), run.id
        offline = run.settings.mode in ("offline", "dryrun")
        run.finish()
        if offline:  # a resumed run wrote one folder per process, all under the same id
            parts = sorted(glob.glob(os.path.join(os.path.dirname(run_dir), f"*-{run_id}")))
            log.info("W&B offline run saved; upload it with: wandb sync %s",
                     " ".join(parts or [run_dir]))  # fmt: skip


def config_for_logging(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain dict (what W&B shows in the run's Config panel)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore
