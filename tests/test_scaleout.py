"""Scale-out on Lightning's and Hydra's own engines: two-process DDP on CPUs (gloo) through
train.py, a two-job Optuna sweep, and the SLURM launcher config (composed; no SLURM needed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf, open_dict, read_write
from test_training import wandb_records  # tests/ is on sys.path under pytest

from facediff.checkpoint import load_checkpoint
from facediff.data.balanced_sampler import BalancedSampler
from facediff.inference.generator import Generator
from facediff.lightning import sweeps
from facediff.lightning.distributed import (
    MultirunRelaunchError,
    launched_as_rank_zero,
    refuse_relaunch_in_multirun,
)
from facediff.lightning.sweeps import job_run_name, objective_value
from facediff.lightning.training import build_trainer

ROOT = Path(__file__).parents[1]
CONF_DIR = ROOT / "conf"
BATCH = 4

# conftest.TINY as command-line overrides for train.py (demo data: 16 images of 16 px per class).
TINY_CLI = (
    "experiment=demo",
    "data.demo={n_per_class: 16, size: 16, seed: 0}",
    "data.image_size=16",
    f"data.batch_size={BATCH}",
    "data.num_workers=0",
    "model.channel_mult=[1,2]",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.model_summary=null",
    "callbacks.ema.start_step=0",
    "callbacks.eval_metrics=null",
)


def train_py(cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`python train.py ...` in `cwd` (so Hydra's default, timestamped folders land there)."""
    path = os.pathsep.join(
        [str(ROOT), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    )
    env = {
        **os.environ,
        "PYTHONPATH": path,  # this checkout's facediff, and tests/ for scaleout_probe
        "OMP_NUM_THREADS": "1",  # two ranks on two cores
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def keep_rank(monkeypatch):
    """Building a DDP Trainer sets Lightning's process-wide rank (`rank_zero_only.rank`, read by
    every rank-zero-only writer); put it back afterwards, so later tests still write files."""
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)


@pytest.fixture
def hydra_config():
    """Set Hydra's global config as @hydra.main would, and clear it afterwards."""

    def _set(cfg) -> None:
        HydraConfig.instance().set_config(cfg)

    yield _set
    HydraConfig.instance().cfg = None  # type: ignore[assignment]


# ------------------------------------------------------------------------------------ DDP
@pytest.mark.parametrize("balanced", [True, False], ids=["balanced_sampler", "shuffled"])
def test_two_process_ddp_on_cpu(tmp_path, demo_cache, balanced):
    epochs = 2 if balanced else 1
    figures = (
        ["callbacks.sample_grid.every_n_epochs=1", "callbacks.sample_grid.n_per_class=1",
         "callbacks.sample_grid.sampling.steps=2", "callbacks.sample_grid.denoising_frames=null",
         "callbacks.sample_grid.max_time_share=null"]
        if balanced else ["callbacks.sample_grid=null"]
    )  # fmt: skip
    probe = tmp_path / "probe"
    proc = train_py(
        tmp_path,
        "trainer=ddp",
        "trainer.devices=2",
        *TINY_CLI,
        "logger=csv",
        f"data.balanced={balanced}",
        f"trainer.max_epochs={epochs}",
        *figures,
        f"paths.cache_dir={demo_cache}",
        "+callbacks.probe._target_=scaleout_probe.SeenIndices",
        f"+callbacks.probe.out_dir={probe}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    # One run folder: rank 1, started by Lightning with the same argv, used rank 0's.
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1, runs
    run_dir = runs[0].resolve()
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, rank in enumerate(ranks):
        assert (rank["global_rank"], rank["world_size"]) == (r, 2)
        assert Path(rank["default_root_dir"]).resolve() == run_dir

    # Disjoint data: in every epoch the two ranks' draws together are exactly the single draw
    # of the epoch, plus the few positions DistributedSampler repeats to even out the shards.
    data_seed = OmegaConf.load(run_dir / "config.yaml").data.seed
    n = ranks[0]["n_train"]
    per_rank = math.ceil(n / 2)
    padding = 2 * per_rank - n
    expected_sampler = "DistributedSamplerWrapper" if balanced else "DistributedSampler"
    assert {rank["sampler"] for rank in ranks} == {expected_sampler}
    if balanced:
        assert {rank["inner_sampler"] for rank in ranks} == {"BalancedSampler"}
    for epoch in range(epochs):
        a, b = ranks[0]["seen"][epoch], ranks[1]["seen"][epoch]
        assert len(a) == len(b) == per_rank
        if balanced:
            full_draw = BalancedSampler(ranks[0]["targets"], seed=data_seed)
            full_draw.set_epoch(epoch)
            full = Counter(full_draw)
        else:
            full = Counter(range(n))
            assert len(set(a) & set(b)) <= padding
        drawn = Counter(a) + Counter(b)
        assert not full - drawn, "some of the epoch's draw was seen by no rank"
        assert sum((drawn - full).values()) == padding, "the ranks saw overlapping data"
    if balanced:  # a fresh draw every epoch
        assert ranks[0]["seen"][0] != ranks[0]["seen"][1]
    steps = epochs * (per_rank // BATCH)  # per-rank batches, not the whole set's
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == steps

    # Written once, by rank 0, into the one folder: no per-rank copies or folders.
    expected = {".hydra", "checkpoints", "config.yaml", "csv", "loss_curves.json",
                "loss_curves.png", "train.log", "train_ddp_process_1.log"}  # fmt: skip
    assert {p.name for p in run_dir.iterdir()} == expected | ({"samples"} if balanced else set())
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == [
        "config.yaml", "hydra.yaml", "overrides.yaml"
    ]  # fmt: skip
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts and ckpts[0].startswith("best-"), ckpts
    rank0_log = (run_dir / "train.log").read_text()
    rank1_log = (run_dir / "train_ddp_process_1.log").read_text()
    for line in ("Resolved config saved", "val/loss", "steps/s"):
        assert line in rank0_log and line not in rank1_log, line
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert (cfg.trainer.strategy, cfg.trainer.devices) == ("ddp", 2)
    history = json.loads((run_dir / "loss_curves.json").read_text())
    assert history["train_steps"] == list(range(1, steps + 1))  # rank 0's steps, once each
    assert len(history["val"]) == epochs
    if balanced:
        samples = run_dir / "samples"
        grids = sorted(p.name for p in samples.glob("*.png") if "attention" not in p.name)
        assert grids == ["epoch0000-step0000005.png", "epoch0001-step0000010.png", "final.png"]
        assert (samples / "final.png").read_bytes() == (samples / grids[1]).read_bytes()
        assert rank0_log.count("Wrote sample figures") == epochs
        assert "Wrote sample figures" not in rank1_log

    # The checkpoint is complete and samples.
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == steps
    generator = Generator.from_checkpoint(run_dir / "checkpoints" / "last.ckpt", device="cpu")
    images, labels = generator.sample(n_per_class=1, sampler="ddim", steps=2, seed=0)
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()
    assert labels == ["glasses", "hat", "beard"]


def test_rank_zero_is_read_from_every_launcher_environment():
    assert launched_as_rank_zero({})
    assert launched_as_rank_zero({"LOCAL_RANK": "0", "NODE_RANK": "0", "SLURM_PROCID": "0"})
    for name, value in [
        ("LOCAL_RANK", "1"),  # Lightning's relaunched copies of train.py
        ("NODE_RANK", "1"),  # ... on the second node
        ("SLURM_PROCID", "5"),  # srun / submitit tasks
        ("RANK", "3"),  # torchrun
    ]:
        assert not launched_as_rank_zero({name: value}), name


def test_ddp_relaunch_inside_a_multirun_is_refused(tiny_cfg, keep_rank):
    trainer = build_trainer(tiny_cfg("trainer=ddp", "trainer.devices=2", "logger=none"))
    with pytest.raises(MultirunRelaunchError, match=r"re-running train\.py"):
        refuse_relaunch_in_multirun(trainer, multirun=True)
    refuse_relaunch_in_multirun(trainer, multirun=False)  # a single DDP job is fine
    single = build_trainer(tiny_cfg("trainer=ddp", "trainer.devices=1", "logger=none"))
    refuse_relaunch_in_multirun(single, multirun=True)  # ... and so is one device per job


# ----------------------------------------------------------------------------------- sweeps
def test_objective_value_is_the_named_metric_or_none_with_a_warning(caplog, monkeypatch):
    metrics = {"val/loss": torch.tensor(0.25), "train/loss_epoch": torch.tensor(0.5)}
    assert objective_value(metrics, "val/loss") == 0.25
    assert objective_value(metrics, None) is None
    assert objective_value(metrics, "eval/class_consistency") is None
    assert caplog.text == ""  # a single run returns to no sweeper: nothing to warn of
    monkeypatch.setattr(sweeps, "in_multirun", lambda: True)
    assert objective_value(metrics, "eval/class_consistency") is None
    assert "eval/class_consistency" in caplog.text and "train/loss_epoch, val/loss" in caplog.text


def test_each_job_of_a_multirun_gets_its_own_run_name(hydra_config, tmp_path):
    assert job_run_name() is None  # outside Hydra
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "multirun/train/2026-01-02_03-04-05")
        cfg.hydra.job.num = 3
        cfg.hydra.runtime.output_dir = str(tmp_path / "multirun/train/2026-01-02_03-04-05/3")
    hydra_config(cfg)
    assert job_run_name() == "2026-01-02_03-04-05/3"
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "outputs/train/2026-01-02_03-04-05")
    hydra_config(cfg)
    assert job_run_name() == "2026-01-02_03-04-05"


def test_two_job_optuna_sweep(tmp_path, demo_cache):
    sweep_dir = tmp_path / "multirun"
    proc = train_py(
        tmp_path,
        "hparams_search=optuna",  # sets hydra.mode=MULTIRUN: no -m needed
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.direction=maximize",  # configurable: here the larger val/loss wins
        f"hydra.sweep.dir={sweep_dir}",
        *TINY_CLI,
        "logger=wandb",
        "trainer.max_steps=3",
        "callbacks.sample_grid=null",
        f"paths.cache_dir={demo_cache}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]

    # Each job: its own folder, parameters, returned val/loss and (offline) W&B run.
    losses, params = [], []
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        losses.append(json.loads((job / "loss_curves.json").read_text())["val"][-1]["loss"])
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
        params.append({k: v for k, _, v in (o.partition("=") for o in overrides)})
        wandb_runs = list((job / "wandb").glob("offline-run-*/*.wandb"))
        assert len(wandb_runs) == 1, wandb_runs
        run = next(
            r.run for r in wandb_records(wandb_runs[0]) if r.WhichOneof("record_type") == "run"
        )
        assert run.display_name == f"multirun/{job.name}"  # <sweep folder>/<job number>
    assert params[0]["optim.optimizer.lr"] != params[1]["optim.optimizer.lr"]

    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = max(range(2), key=lambda i: losses[i])
    assert results.best_value == pytest.approx(losses[best], rel=1e-5)
    assert float(results.best_params["optim.optimizer.lr"]) == pytest.approx(
        float(params[best]["optim.optimizer.lr"])
    )


# ------------------------------------------------------------------------------------ SLURM
SLURM_OVERRIDES = (
    "hydra/launcher=slurm",
    "trainer=ddp_slurm",
    "hydra.launcher.gpus_per_node=4",
    "hydra.launcher.nodes=2",
    "hydra.launcher.partition=gpu",
)


def compose_slurm(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *SLURM_OVERRIDES,
                "logger=none",
                f"hydra.sweep.dir={tmp_path / 'sweep'}",
                f"paths.output_dir={tmp_path / 'sweep' / '0'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
            return_hydra_config=True,
        )


def test_slurm_launcher_maps_one_job_to_n_gpus(tmp_path, hydra_config, monkeypatch, keep_rank):
    cfg = compose_slurm(tmp_path)
    hydra_config(cfg)  # `${hydra:launcher...}` in trainer=ddp_slurm resolves from it
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert (cfg.trainer.strategy, cfg.trainer.accelerator) == ("ddp", "gpu")
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)

    # What submitit would ask SLURM for: build the plugin's executor, stop before sbatch.
    import submitit
    from hydra.utils import instantiate

    captured = {}

    def no_submission(executor, fn, *args):
        captured["executor"] = executor
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", no_submission)
    # the executor refuses to exist where there is no `srun`
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    plugin = instantiate(launcher)
    plugin.setup(hydra_context=None, task_function=None, config=cfg)
    assert plugin.launch([["model=unet"]], initial_job_idx=0) == []
    sbatch = captured["executor"]._executor._make_submission_file_text("python -u x.py", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                 "--signal=USR2@120"):  # fmt: skip
        assert f"#SBATCH {line}" in sbatch, sbatch

    # On the cluster, task 5 of 8 (node 1, GPU 1): Lightning's SLURMEnvironment takes the ranks
    # from SLURM, starts no processes, and accepts the composed trainer at fit (it refuses
    # devices != SLURM_NTASKS_PER_NODE there).
    slurm_env = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2",
                 "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
                 "SLURM_JOB_ID": "123", "SLURM_JOB_NAME": "train",
                 "SLURM_NODELIST": "gpu[01-02]"}  # fmt: skip
    for name, value in slurm_env.items():
        monkeypatch.setenv(name, value)
    trainer = build_trainer(OmegaConf.merge(cfg, {"trainer": {"accelerator": "cpu"}}))  # no GPU
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert environment.creates_processes_externally
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank) == (8, 5, 1)
    assert (trainer.local_rank, trainer.num_devices, trainer.num_nodes) == (1, 4, 2)
    environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    with pytest.raises(ValueError, match="ntasks-per-node"):  # what a mismatch would meet
        environment.validate_settings(num_devices=2, num_nodes=trainer.num_nodes)
    refuse_relaunch_in_multirun(trainer, multirun=True)  # SLURM starts the ranks: sweeps work
    assert rank_zero_only.rank == 5  # put back to this process's own rank by keep_rank
