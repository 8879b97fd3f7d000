"""Config values are checked when a run starts, before any work, each error naming the key
and what is allowed; every shipped config passes."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from facediff.config_checks import (
    ConfigError,
    check_evaluate_config,
    check_sample_config,
    check_train_config,
)
from facediff.jobs import evaluate, sample
from facediff.lightning import training

CONF = Path(__file__).parents[1] / "conf"
GROUPS = ["data", "model", "diffusion", "trainer", "callbacks", "logger", "experiment", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    ["seed=42"] + [f"{g}={o}" for g in GROUPS for o in options(g)]
    + [f"data/labels={o}" for o in options("data/labels")],
)  # fmt: skip
def test_every_shipped_config_passes(compose_cfg, override):
    extra = ["+data.classes={white: 0, asian: 2}"] if override == "data/labels=custom" else []
    check_train_config(compose_cfg(override, *extra))


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["optim.optimizer.lr=0"], "optim.optimizer.lr=0: must be a finite number > 0"),
        (["optim.optimizer.lr=-1e-3"], "optim.optimizer.lr=-0.001"),
        (["optim.optimizer.lr=inf"], "optim.optimizer.lr=inf"),
        (["optim.optimizer.betas=[0.9,1.0]"], "optim.optimizer.betas"),
        (["callbacks.sample_grid.sampling.steps=1000"],
         "callbacks.sample_grid.sampling.steps=1000: must be in 1..500 (diffusion.num_steps"),
        (["callbacks.eval_metrics.sampling.sampler=euler"],
         "callbacks.eval_metrics.sampling.sampler='euler': must be one of ['ddpm', 'ddim', "
         "'dpmpp']"),
        (["callbacks.sample_grid.sampling.spacing=leading"],
         "callbacks.sample_grid.sampling.spacing='leading': must be one of ['trailing', "
         "'linspace']"),
        (["diffusion.prediction=eps", "callbacks.eval_metrics=null",
          "callbacks.sample_grid.sampling.eta=0"],
         "callbacks.sample_grid.sampling.sampler='dpmpp'"),
        (["callbacks.eval_metrics.kid_subset_size=1"],
         "callbacks.eval_metrics.kid_subset_size=1: must be an integer >= 2"),
        (["callbacks.eval_metrics.n_per_class=1"], "callbacks.eval_metrics.n_per_class=1"),
        (["callbacks.sample_grid.every_n_epochs=0"], "callbacks.sample_grid.every_n_epochs=0"),
        (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
        (["data.image_size=60"], "data.image_size=60: must be a multiple of 8"),
        (["module.p_uncond=1.0"], "module.p_uncond=1.0: must be a finite number in [0.0, 1.0)"),
        (["callbacks.ema.decay=1.0"], "callbacks.ema.decay=1.0"),
        (["trainer.precision=fp16"], "trainer.precision='fp16': must be one of ['auto', '32-true', "
                                     "'16-mixed', 'bf16-mixed'"),
        (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1"),
        (["+trainer.max_epoch=3"], "trainer.max_epoch=3: is not an argument of Lightning's "
                                   "Trainer; did you mean trainer.max_epochs?"),
        (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
        (["callbacks.nonfinite_guard.max_consecutive=0"],
         "callbacks.nonfinite_guard.max_consecutive=0"),
        (["callbacks.model_checkpoint.monitor=val/los"],
         "callbacks.model_checkpoint.monitor='val/los': must be one of ['val/loss'"),
        (["callbacks.model_checkpoint.monitor=eval/kid",
          "callbacks.eval_metrics.max_time_share=null"],
         "callbacks.model_checkpoint.every_n_epochs=None: must be a multiple of "
         "callbacks.eval_metrics.every_n_epochs=10"),
        (["callbacks.model_checkpoint.monitor=eval/kid",
          "callbacks.model_checkpoint.every_n_epochs=10"],
         "callbacks.eval_metrics.max_time_share=0.05: must be null when eval/kid is the"),
        (["callbacks.sample_grid.max_time_share=0"], "callbacks.sample_grid.max_time_share=0"),
        (["module.channels_last=yes"], "module.channels_last='yes': must be one of [True, False, "),
        (["optim.optimizer.fused=yes"], "optim.optimizer.fused='yes': must be one of [True, "),
        (["module.compile_mode=fast"], "module.compile_mode='fast': must be one of [None, "),
        (["callbacks.eval_metrics=null", "optimized_metric=eval/kid"],
         "optimized_metric='eval/kid': must be null or one of"),
        (["optimized_metric=test/loss"], "(test=true is off)"),
    ],
)  # fmt: skip
def test_a_bad_value_is_named_with_what_is_allowed(compose_cfg, overrides, named):
    with pytest.raises(ConfigError) as err:
        check_train_config(compose_cfg(*overrides))
    assert named in str(err.value)
    assert "1 invalid value(s)" in str(err.value)  # only the one that is wrong


def test_every_problem_is_reported_at_once_and_good_combinations_pass(compose_cfg):
    with pytest.raises(ConfigError) as err:
        check_train_config(compose_cfg("optim.optimizer.lr=0", "data.batch_size=-2", "seed=x"))
    for key in ("optim.optimizer.lr=0", "data.batch_size=-2", "seed='x'"):
        assert key in str(err.value)
    check_train_config(
        compose_cfg(
            "callbacks.model_checkpoint.monitor=eval/class_consistency",
            "callbacks.model_checkpoint.mode=max",
            "callbacks.model_checkpoint.every_n_epochs=20",
            "callbacks.eval_metrics.max_time_share=null",
            "optimized_metric=eval/class_consistency",
            "test=true",
            "diffusion.prediction=eps",  # with the default sampling (dpmpp at eta 1) too
            "callbacks.sample_grid.sampling.sampler=ddpm",
            "callbacks.eval_metrics.sampling.sampler=ddim",
            "callbacks.eval_metrics.sampling.eta=1.0",
        )
    )


def test_a_kid_subset_larger_than_the_samples_is_announced(compose_cfg, caplog):
    check_train_config(compose_cfg("callbacks.eval_metrics.kid_subset_size=1000"))
    assert "kid_subset_size=1000 is more than the 192 samples drawn" in caplog.text


def test_train_fails_before_any_work_also_when_resuming(compose_cfg, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the config was checked")

    monkeypatch.setattr(training, "build_datamodule", no_work)
    monkeypatch.setattr(training.L, "seed_everything", no_work)
    for resume in ([], [f"ckpt_path={tmp_path / 'missing' / 'last.ckpt'}"]):
        cfg = compose_cfg("callbacks.sample_grid.sampling.steps=501", *resume)
        with pytest.raises(ConfigError, match=r"callbacks\.sample_grid\.sampling\.steps=501"):
            training.run(cfg)
        assert not (Path(cfg.paths.output_dir) / "config.yaml").exists()


def compose_job(name: str, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(name, overrides=["ckpt=/nowhere/last.ckpt", "out=/nowhere/out", *overrides])


@pytest.mark.parametrize(
    "job, check, overrides, named",
    [
        (sample, check_sample_config, ["batch_size=0"], "batch_size=0: must be an integer >= 1"),
        (sample, check_sample_config, ["device=gpu"], "device='gpu': must be auto, cpu"),
        (sample, check_sample_config, ["grid_scale=0"], "grid_scale=0"),
        (sample, check_sample_config, ["sweep={start: a, end: b, n_steps: 1, n_seeds: 1}"],
         "sweep.n_steps=1: must be an integer >= 2"),
        (evaluate, check_evaluate_config, ["kid.subset_size=1"], "kid.subset_size=1"),
        (evaluate, check_evaluate_config, ["memorisation.quantile=1.5"],
         "memorisation.quantile=1.5: must be a finite number in [0.0, 1.0]"),
        (evaluate, check_evaluate_config, ["n_per_class=abc"],
         "n_per_class='abc': must be an integer >= 2"),
        (evaluate, check_evaluate_config, ["memorisation.copy_ratio=0"],
         "memorisation.copy_ratio=0: must be a finite number in (0.0, 1.0]"),
        (evaluate, check_evaluate_config, ["memorisation.profile=[0.01,1.0]"],
         "memorisation.profile=[0.01, 1.0]: must be a list of quantiles in (0, 1)"),
        (evaluate, check_evaluate_config, ["classifier.lr=0"], "classifier.lr=0"),
        (evaluate, check_evaluate_config, ["sweep.n_per_class=1"], "sweep.n_per_class=1"),
    ],
)  # fmt: skip
def test_sample_and_evaluate_name_bad_values_before_reading_the_checkpoint(
    job, check, overrides, named
):
    name = job.__name__.rsplit(".", 1)[1]
    check(compose_job(name))  # the defaults pass
    with pytest.raises(ConfigError) as err:
        job.run(compose_job(name, *overrides))  # ConfigError, not "checkpoint does not exist"
    assert named in str(err.value)


@pytest.mark.parametrize(
    "overrides, refused",
    [
        (["data.classes={european: 0, oriental: 2}"], True),  # merged: indian would stay
        (["data.classes={european: 0, indian: 3, oriental: 2}"], False),
        (["data.classes.indian=1"], False),  # one class changed, as typed
        (["data/labels=custom", "+data.classes={white: 0, asian: 2}"], False),
    ],
)  # fmt: skip
def test_a_classes_dict_that_hydra_would_merge_is_refused(compose_cfg, overrides, refused):
    cfg = compose_cfg(*overrides)
    if not refused:
        check_train_config(cfg, overrides)
        return
    with pytest.raises(ConfigError, match=r"is merged into data/labels' classes, adding "
                                          r"\['indian'\].*data/labels=custom"):  # fmt: skip
        check_train_config(cfg, overrides)
