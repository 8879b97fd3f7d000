"""Config values checked when a run starts, before any data is read or step taken.

`check_train_config` (train.py, also on resume), `check_sample_config` (sample.py) and
`check_evaluate_config` (evaluate.py) look at what a user can type on the command line and raise
one `ConfigError` listing every problem, each as `key=value: what is allowed`. What needs the
checkpoint (steps against its T, class names) is checked where it is loaded
(facediff/jobs/*.py); the data module, the network and the diffusion settings check their own
values too, so these checks are about reporting everything early, with the full key.

Without them some mistakes surfaced late: a training callback's sampler or step count after the
images were decoded and the evaluation classifier trained (and again on resume), a learning rate
of 0 when the optimizer was built, a checkpoint monitor on `eval/*` at the first epoch without
that metric.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from facediff.data.checks import MAX_NEAR_DUPLICATES, check_demo, configured_class_names
from facediff.diffusion.objective import build_diffusion
from facediff.diffusion.sampling import check_fits
from facediff.diffusion.settings import PRECISIONS as SAMPLING_PRECISIONS
from facediff.diffusion.settings import SAMPLERS, SPACINGS, SamplingSettings

PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
              "transformer-engine", "32", "16", "64", "bf16", 32, 16, 64)  # fmt: skip
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# What facediff logs in training (besides val_t/* and test_t/*); monitors and sweeps pick these.
TRAIN_METRICS = ("val/loss", "train/loss", "train/loss_step", "train/loss_epoch",
                 "train/skipped_steps")  # fmt: skip
EVAL_METRICS = ("eval/class_consistency", "eval/kid")
ABSENT = object()

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Config values that cannot work: one line per key, with the allowed values."""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Checks:
    """Collects problems of one config; `raise_if_any()` raises them together."""

    def __init__(self, cfg: DictConfig, what: str) -> None:
        self.cfg = cfg
        self.what = what
        self.errors: list[str] = []

    def get(self, key: str) -> Any:
        value = OmegaConf.select(self.cfg, key, default=ABSENT)
        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
        return value

    def fail(self, key: str, value: Any, allowed: str) -> None:
        self.errors.append(f"{key}={value!r}: {allowed}")

    def integer(
        self, key: str, minimum: int | None = None, maximum: int | None = None, null: bool = False
    ) -> None:
        value = self.get(key)
        if value is ABSENT or (null and value is None):
            return
        ok = is_int(value) and (minimum is None or value >= minimum)
        if not ok or (maximum is not None and value > maximum):
            lower = "" if minimum is None else f" >= {minimum}"
            upper = "" if maximum is None else f" and <= {maximum}"
            either = " or null" if null else ""
            self.fail(key, value, f"must be an integer{lower}{upper}{either}")

    def number(
        self,
        key: str,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
        high_open: bool = False,
        null: bool = False,
    ) -> None:
        value = self.get(key)
        if value is ABSENT or (null and value is None):
            return
        ok = is_number(value) and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if not ok:
            if high < math.inf:
                left, right = "(" if low_open else "[", ")" if high_open else "]"
                where = f" in {left}{low}, {high}{right}"
            elif low > -math.inf:
                where = f" {'>' if low_open else '>='} {low}"
            else:
                where = ""
            self.fail(key, value, f"must be a finite number{where}" + (" or null" if null else ""))

    def choice(self, key: str, allowed: Sequence[Any]) -> None:
        value = self.get(key)
        if value is not ABSENT and value not in allowed:
            self.fail(key, value, f"must be one of {list(allowed)}")

    def raise_if_any(self) -> None:
        if self.errors:
            lines = "\n".join(f"  - {e}" for e in self.errors)
            raise ConfigError(
                f"The {self.what} config has {len(self.errors)} invalid value(s); nothing was "
                f"run. Fix them on the command line (key=value) or in conf/:\n{lines}"
            )


def check_sampling(
    checks: Checks, prefix: str, schedule: Any = None, objective: Any = None
) -> None:
    """The six sampling keys under `prefix` (conf/sampling/default.yaml) and, given the model's
    diffusion, whether they fit it (steps <= T, no deterministic sampler from zero SNR with an
    epsilon model)."""
    dot = f"{prefix}." if prefix else ""
    before = len(checks.errors)
    checks.choice(f"{dot}sampler", SAMPLERS)
    checks.integer(f"{dot}steps", 1)
    checks.number(f"{dot}guidance", 0.0)
    checks.number(f"{dot}eta", 0.0)
    checks.integer(f"{dot}seed")
    checks.choice(f"{dot}spacing", SPACINGS)
    checks.choice(f"{dot}precision", SAMPLING_PRECISIONS)
    if schedule is None or len(checks.errors) > before:
        return
    node = checks.get(prefix)
    try:
        check_fits(SamplingSettings.from_config(node), schedule, objective)
    except (TypeError, ValueError) as err:
        steps, T = node.get("steps"), schedule.num_steps
        if is_int(steps) and steps > T:
            checks.fail(f"{dot}steps", steps, f"must be in 1..{T} (diffusion.num_steps, the T)")
        else:
            checks.fail(f"{dot}sampler", node.get("sampler"), str(err))


def known_metric(name: str, eval_on: bool, test_on: bool) -> bool:
    if name in TRAIN_METRICS or name.startswith("val_t/loss_t") or name.startswith("lr-"):
        return True
    if name in EVAL_METRICS:
        return eval_on
    return test_on and (name == "test/loss" or name.startswith("test_t/loss_t"))


def configured_num_classes(c: Checks) -> int | None:
    """The number of classes when the data config decides it (None: known only from disk, or
    a data config the data module will refuse with its own message)."""
    data = c.get("data")
    if not isinstance(data, dict):
        return None
    try:
        demo = check_demo(data.get("demo"), data.get("layout", "utkface"))
        names = configured_class_names(
            data.get("layout", "utkface"), data.get("classes"), data.get("attribute"), demo
        )
    except (TypeError, ValueError):
        return None
    return None if names is None else len(names)


def check_trainer_keys(c: Checks) -> None:
    """Every `trainer.*` key is an argument of Lightning's Trainer (a misspelt one, added with
    Hydra's `+`, failed only when the Trainer was built, after the run folder was made)."""
    trainer = OmegaConf.select(c.cfg, "trainer")
    if not isinstance(trainer, DictConfig):
        return
    from lightning.pytorch import Trainer

    params = inspect.signature(Trainer.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # a wrapped Trainer (a plugin, a test) that takes any keyword: nothing to check
    known = [p for p in params if p != "self"]
    for key in trainer:  # keys only: some values resolve only inside a Hydra job (SLURM's)
        if not isinstance(key, str) or key.startswith("_") or key in known:
            continue
        value = OmegaConf.select(trainer, key, throw_on_resolution_failure=False)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean trainer.{close[0]}?" if close else " (see conf/trainer/)"
        c.fail(f"trainer.{key}", value, f"is not an argument of Lightning's Trainer{hint}")


def check_classes_override(c: Checks, overrides: Sequence[str]) -> None:
    """`data.classes={a: 0, b: 2}` on the command line is merged by Hydra into the classes of
    data/labels (race3's three): the run would train on more groups than typed, silently."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    classes = c.get("data.classes")
    if not isinstance(classes, dict):
        return
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group != "data.classes" or override.is_add():
            continue
        typed = override.value()
        extra = sorted(set(classes) - set(typed)) if isinstance(typed, dict) else []
        if extra:
            c.fail("data.classes", typed, f"is merged into data/labels' classes, adding {extra}. "
                   "To train on exactly these: data/labels=custom '+data.classes={...}'; to "
                   "change one class: data.classes.<name>=<value>")  # fmt: skip


def check_train_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Everything of conf/train.yaml a user types (on resume too), before anything is built.
    `overrides`: the command line's (Hydra's task overrides), where their form matters."""
    c = Checks(cfg, "training")
    check_trainer_keys(c)
    check_classes_override(c, overrides)
    c.number("optim.optimizer.lr", 0.0, low_open=True)
    c.number("optim.optimizer.weight_decay", 0.0)
    betas = c.get("optim.optimizer.betas")
    if betas is not ABSENT and not (
        isinstance(betas, list)
        and len(betas) == 2
        and all(is_number(b) and 0 <= b < 1 for b in betas)
    ):
        c.fail("optim.optimizer.betas", betas, "must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    c.choice("optim.optimizer.fused", (True, False, None, "auto"))
    c.integer("optim.scheduler.warmup_steps", 0)
    c.number("optim.scheduler.min_lr_ratio", 0.0, 1.0)
    c.integer("seed", 0, null=True)

    c.integer("data.batch_size", 1)
    c.integer("data.eval_batch_size", 1, null=True)
    c.integer("data.image_size", 1)
    c.integer("data.num_workers", 0)
    c.number("data.near_duplicates", 0.0, MAX_NEAR_DUPLICATES, low_open=True, null=True)
    size, mult = c.get("data.image_size"), c.get("model.channel_mult")
    if is_int(size) and isinstance(mult, list) and mult and size % 2 ** (len(mult) - 1):
        factor = 2 ** (len(mult) - 1)
        near = size // factor * factor or factor
        halves = f"it halves the image {len(mult) - 1} times"
        c.fail("data.image_size", size, f"must be a multiple of {factor} for model.channel_mult="
               f"{mult} ({halves}), e.g. {near}")  # fmt: skip

    c.number("module.p_uncond", 0.0, 1.0, high_open=True)
    c.integer("module.val_timesteps", 1)
    c.integer("module.val_seed", 0)
    c.choice("module.channels_last", (True, False, "auto"))
    c.choice("module.compile", (True, False, "auto"))
    c.choice("module.compile_mode", COMPILE_MODES)

    c.choice("trainer.precision", PRECISIONS)
    c.integer("trainer.max_epochs", -1, null=True)
    c.integer("trainer.max_steps", -1)
    c.number("trainer.gradient_clip_val", 0.0, null=True)
    c.choice("trainer.gradient_clip_algorithm", ("norm", "value", None))
    c.integer("trainer.accumulate_grad_batches", 1)
    c.integer("trainer.check_val_every_n_epoch", 1, null=True)
    c.integer("trainer.log_every_n_steps", 1)

    c.number("callbacks.ema.decay", 0.0, 1.0, high_open=True)
    c.integer("callbacks.ema.start_step", 0)
    c.integer("callbacks.nonfinite_guard.max_consecutive", 1)

    schedule = objective = None
    diffusion = c.get("diffusion")
    try:
        schedule, objective = build_diffusion(diffusion if isinstance(diffusion, dict) else {})
    except (TypeError, ValueError) as err:
        c.fail("diffusion", diffusion, str(err))
    grid = c.get("callbacks.sample_grid")
    if isinstance(grid, dict):
        c.integer("callbacks.sample_grid.every_n_epochs", 1)
        c.integer("callbacks.sample_grid.n_per_class", 1)
        c.integer("callbacks.sample_grid.denoising_frames", 2, null=True)
        c.number("callbacks.sample_grid.max_time_share", 0.0, 1.0, low_open=True, null=True)
        check_sampling(c, "callbacks.sample_grid.sampling", schedule, objective)
    metrics = c.get("callbacks.eval_metrics")
    eval_on = isinstance(metrics, dict)
    if eval_on:
        c.integer("callbacks.eval_metrics.every_n_epochs", 1)
        c.integer("callbacks.eval_metrics.n_per_class", 2)
        c.integer("callbacks.eval_metrics.classifier.epochs", 1)
        c.number("callbacks.eval_metrics.classifier.lr", 0.0, low_open=True)
        c.number("callbacks.eval_metrics.max_time_share", 0.0, 1.0, low_open=True, null=True)
        check_sampling(c, "callbacks.eval_metrics.sampling", schedule, objective)
        c.integer("callbacks.eval_metrics.kid_subset_size", 2)
        n, subset = metrics.get("n_per_class"), metrics.get("kid_subset_size")
        num_classes = configured_num_classes(c)
        if is_int(n) and is_int(subset) and num_classes and subset > n * num_classes:
            log.warning(
                "callbacks.eval_metrics.kid_subset_size=%d is more than the %d samples drawn "
                "(n_per_class=%d x %d classes): KID will use subsets of %d or fewer (also capped "
                "at the validation split's size). Raise callbacks.eval_metrics.n_per_class for "
                "the subset size asked.", subset, n * num_classes, n, num_classes, n * num_classes
            )  # fmt: skip
    check_metrics(c, eval_on)
    c.raise_if_any()


def check_metrics(c: Checks, eval_on: bool) -> None:
    """The checkpoint monitor and the sweepers' metric exist, in the epochs they are needed."""
    test_on = bool(c.get("test"))
    known = [*TRAIN_METRICS, "val_t/loss_tNNNN", *(EVAL_METRICS if eval_on else ()),
             *(("test/loss", "test_t/loss_tNNNN") if test_on else ())]  # fmt: skip
    ckpt = c.get("callbacks.model_checkpoint")
    monitor = ckpt.get("monitor") if isinstance(ckpt, dict) else None
    if monitor is not None:
        c.choice("callbacks.model_checkpoint.mode", ("min", "max"))
        if monitor.startswith("test"):
            c.fail("callbacks.model_checkpoint.monitor", monitor, "test metrics exist only "
                   f"after fit; monitor one of {known[:5] + list(EVAL_METRICS)}")  # fmt: skip
        elif not known_metric(monitor, eval_on, test_on=False):
            hint = " (callbacks.eval_metrics is off)" if monitor in EVAL_METRICS else ""
            c.fail("callbacks.model_checkpoint.monitor", monitor, f"must be one of {known}{hint}")
        elif monitor in EVAL_METRICS:
            every = c.get("callbacks.eval_metrics.every_n_epochs")
            ckpt_every = ckpt.get("every_n_epochs") or 1
            if is_int(every) and (not is_int(ckpt_every) or ckpt_every % every):
                c.fail("callbacks.model_checkpoint.every_n_epochs", ckpt.get("every_n_epochs"),
                       f"must be a multiple of callbacks.eval_metrics.every_n_epochs={every}: "
                       f"{monitor} exists only in those epochs")  # fmt: skip
            share = c.get("callbacks.eval_metrics.max_time_share")
            if share not in (None, ABSENT):
                c.fail("callbacks.eval_metrics.max_time_share", share,
                       f"must be null when {monitor} is the checkpoint monitor: a skipped "
                       "evaluation would leave the checkpoint without its metric")  # fmt: skip
    metric = c.get("optimized_metric")
    if metric not in (None, ABSENT) and not known_metric(str(metric), eval_on, test_on):
        hint = " (callbacks.eval_metrics is off)" if metric in EVAL_METRICS else ""
        hint += " (test=true is off)" if str(metric).startswith("test") else ""
        c.fail("optimized_metric", metric, f"must be null or one of {known}{hint}")


def check_sample_config(cfg: DictConfig) -> None:
    """conf/sample.yaml's values, before the checkpoint is read. (The sampling settings and
    class names need the checkpoint: facediff.jobs.sample.check_config checks them next.)"""
    c = Checks(cfg, "sampling")
    check_ckpt(c)
    check_sampling(c, "")
    c.integer("n_per_class", 1)
    c.integer("batch_size", 1)
    c.integer("grid_scale", 1)
    check_device(c)
    classes = c.get("classes")
    if classes is not None and not (isinstance(classes, list) and classes):
        c.fail("classes", classes, "must be null (every class) or a non-empty list of names")
    if isinstance(c.get("sweep"), dict):
        c.integer("sweep.n_steps", 2)
        c.integer("sweep.n_seeds", 1)
    if isinstance(c.get("denoising"), dict):
        c.integer("denoising.n_frames", 2)
    c.raise_if_any()


def check_evaluate_config(cfg: DictConfig) -> None:
    """conf/evaluate.yaml's values, before the checkpoint is read. (task, n_per_class and the
    sampling settings of the main run and the sweep need the model's T:
    facediff.jobs.evaluate.check_config checks them next.)"""
    c = Checks(cfg, "evaluation")
    check_ckpt(c)
    check_sampling(c, "")
    c.integer("n_per_class", 2)
    c.integer("batch_size", 1)
    check_device(c)
    c.integer("data.eval_batch_size", 1, null=True)
    c.integer("data.num_workers", 0, null=True)
    c.integer("classifier.epochs", 1)
    c.number("classifier.lr", 0.0, low_open=True)
    c.integer("kid.subsets", 1)
    c.integer("kid.subset_size", 2)
    c.number("memorisation.quantile", 0.0, 1.0)
    c.number("memorisation.threshold", 0.0, null=True)
    c.number("memorisation.copy_ratio", 0.0, 1.0, low_open=True)
    c.integer("memorisation.copy_size", 4)
    c.integer("memorisation.n_pairs", 0)
    profile = c.get("memorisation.profile")
    if profile is not ABSENT and not (
        isinstance(profile, list) and all(is_number(q) and 0.0 < q < 1.0 for q in profile)
    ):
        c.fail("memorisation.profile", profile, "must be a list of quantiles in (0, 1), or []")
    c.integer("sweep.n_per_class", 2)
    samplers, guidance = c.get("sweep.samplers"), c.get("sweep.guidance")
    if samplers not in (ABSENT, None) and not (
        isinstance(samplers, list)
        and all(
            isinstance(p, dict)
            and set(p) == {"sampler", "steps"}
            and p["sampler"] in SAMPLERS
            and is_int(p["steps"])
            and p["steps"] >= 1
            for p in samplers
        )
    ):
        allowed = (
            f"must be a list of {{sampler, steps}} with sampler one of {list(SAMPLERS)} and "
            "steps >= 1, e.g. [{sampler: ddim, steps: 50}]"
        )
        c.fail("sweep.samplers", samplers, allowed)
    if guidance not in (ABSENT, None) and not (
        isinstance(guidance, list) and all(is_number(w) and w >= 0 for w in guidance)
    ):
        c.fail("sweep.guidance", guidance, "must be a list of numbers >= 0, e.g. [1.0, 2.0, 3.0]")
    c.raise_if_any()


def check_ckpt(c: Checks) -> None:
    if OmegaConf.is_missing(c.cfg, "ckpt"):
        c.fail("ckpt", "???", "is required: ckpt=<run folder>/checkpoints/last.ckpt")
    elif not isinstance(c.get("ckpt"), str):
        c.fail("ckpt", c.get("ckpt"), "must be the path of a checkpoint file")


def check_device(c: Checks) -> None:
    device = c.get("device")
    if device is not ABSENT and not (isinstance(device, str) and DEVICE.match(device)):
        c.fail("device", device, "must be auto, cpu, mps, cuda or cuda:N")
