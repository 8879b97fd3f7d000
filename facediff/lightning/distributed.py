"""What a training process can know about its place in a multi-process run before fit starts.

Lightning sets the ranks of its strategy only inside `trainer.fit`, after launching the other
processes, but train.py writes `config.yaml` before that. Whatever starts the processes says
which one this is in the environment: Lightning's own launcher (`LOCAL_RANK`, `NODE_RANK` for the
copies of train.py it starts), SLURM (`SLURM_PROCID` for every task of `srun` or of the submitit
launcher), torchrun (`RANK`, `LOCAL_RANK`, `GROUP_RANK`), MPI and LSF.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import lightning as L
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

RANK_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "SLURM_PROCID",
    "JSM_NAMESPACE_RANK",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
)


def launched_as_rank_zero(environ: Mapping[str, str] | None = None) -> bool:
    """True unless the environment names this process as any rank other than 0.

    A plain run sets none of `RANK_VARIABLES`, so it is rank 0. Files that every rank would
    otherwise write alike into the shared run folder (config.yaml) are written only where this
    holds, so no rank reads or replaces a half-written copy of another's.
    """
    env = os.environ if environ is None else environ
    return all(env.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


class MultirunRelaunchError(ValueError):
    """DDP would start copies of train.py that re-run the whole Hydra multirun (a config
    mistake: reported as its message, like the other config errors)."""


def refuse_relaunch_in_multirun(trainer: L.Trainer, multirun: bool) -> None:
    """Refuse, before any work, a multi-device DDP fit that Lightning would launch by re-running
    the script inside a Hydra multirun (a sweep or `hparams_search=optuna`).

    Lightning starts ranks 1..N-1 of `strategy=ddp` by running `python train.py` again with the
    same arguments; inside a multirun each copy would then run the whole sweep itself. Ranks that
    SLURM (the submitit launcher, `srun`) or torchrun start are not relaunched, so those work.
    """
    launcher = trainer.strategy.launcher
    if not multirun or not isinstance(launcher, _SubprocessScriptLauncher):
        return
    if launcher.cluster_environment.creates_processes_externally or launcher.num_processes < 2:
        return
    raise MultirunRelaunchError(
        f"strategy=ddp on {launcher.num_processes} devices inside a Hydra multirun: Lightning "
        "would start the other ranks by re-running train.py with the same arguments, and each "
        "would run the whole sweep again. Fix: sweep one device per job (trainer.devices=1), "
        "launch each job's ranks through SLURM (hydra/launcher=slurm trainer=ddp_slurm, see "
        "README), or run single DDP jobs without -m."
    )
