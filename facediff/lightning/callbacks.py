"""Training-time callbacks: sample figures from the EMA weights; validation at max_steps."""

from __future__ import annotations

import logging
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.seed import isolate_rng
from torchvision.utils import make_grid

from facediff import tensor_figures as figures
from facediff.diffusion.sampling import check_fits, network_precision
from facediff.diffusion.settings import SamplingSettings
from facediff.inference import model_figures
from facediff.inference.generator import Generator
from facediff.lightning.time_share import TimeShare
from facediff.untrusted import inside

log = logging.getLogger(__name__)


def module_generator(pl_module: L.LightningModule) -> Generator:
    """A Generator over the module's network as it is now (EMA weights during validation)."""
    return Generator(
        pl_module.net,
        pl_module.schedule,
        pl_module.objective,
        pl_module.class_names,
        pl_module.hparams.image_size,
        device=pl_module.device,
    )  # sets eval(); callers restore train mode where it matters


@contextmanager
def without_cudnn_autotune() -> Iterator[None]:
    """Turn cuDNN's autotuner (`trainer.benchmark=true`, conf/trainer/gpu.yaml) off for a while.

    The autotuner times every convolution algorithm at each new input shape: it pays for
    training's one batch shape, not for the figures' and metrics' one-off batch sizes. On an
    H100 the first network call at the figures' batch size took 3.5 s and the final figures 51 s;
    the autotuner is the likely cause, not a profiled one (BENCHMARKS.md, run 15).
    """
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextmanager
def callback_work(time_share: TimeShare, one_off: bool = False) -> Iterator[None]:
    """A training-time callback's own work: charged to its time share, with cuDNN's autotuner
    off, and with the global random streams (torch, CUDA, numpy, random) restored when it ends
    (Lightning's `isolate_rng`; an exception that escapes ends the fit anyway).

    Figures and metrics draw their noise from their own seeds, but their set-up does not: the
    evaluation classifier reseeds torch, its data loader and the time estimate draw from the
    global stream. Without the isolation, whether a cadence point runs (which the time cap
    decides from wall-clock times) or a classifier was cached would change the training run's
    later random draws, and so its result.
    """
    cuda = torch.cuda.is_initialized()  # never initialise CUDA in a CPU run just to save its state
    with time_share.charge(one_off), without_cudnn_autotune(), isolate_rng(include_cuda=cuda):
        yield


def as_settings(sampling: Mapping[str, Any] | SamplingSettings, name: str) -> SamplingSettings:
    """A callback's sampling settings, checked when the callback is built (at the run's start)."""
    if isinstance(sampling, SamplingSettings):
        return sampling
    try:
        return SamplingSettings.from_config(sampling)
    except (TypeError, ValueError) as err:
        raise ValueError(f"callbacks.{name}.sampling: {err}") from err


class EMAValidationCallback(Callback, ABC):
    """Calls `on_ema_validation` every `every_n_epochs` epochs, right after the first validation
    batch: Lightning's weight averaging has swapped the EMA weights in by then, whatever the
    order of the callbacks (its swap back happens before any `on_validation_epoch_end` of ours
    could see them).

    `time_share` caps the callback's own work (figures, metrics, their set-up) at a share of
    the run's wall time: a cadence point is skipped, and logged, when one more call would pass
    it. Rank 0 decides, so that all DDP ranks skip together.
    """

    every_n_epochs: int = 1
    n_per_class: int = 1
    sampling: SamplingSettings
    time_share: TimeShare
    name: str = "callback"  # its key under `callbacks` in the config, for error messages

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """At the start of the run, refuse settings that cannot work with this model: more
        steps than its T, or a deterministic sampler with an epsilon model at zero SNR (the
        rest of the settings was checked when the callback was built)."""
        try:
            check_fits(self.sampling, pl_module.schedule, pl_module.objective)
        except ValueError as err:
            raise ValueError(f"callbacks.{self.name}.sampling: {err}") from err
        if stage == "fit":
            self.time_share.start()

    def estimate_call(self, pl_module: L.LightningModule) -> float:
        """Seconds that one call will take, before any has run, so that the cap holds from the
        first cadence point on: one timed network evaluation on the batch the sampler draws
        (both halves with guidance), in the sampling precision, times the sampler's steps. A
        lower bound (figures and metrics add work); after the first call its measured cost
        replaces it."""
        n = self.n_per_class * pl_module.num_classes
        n *= 1 if self.sampling.guidance == 1.0 else 2
        size = pl_module.hparams.image_size
        x = torch.randn(n, 3, size, size, device=pl_module.device)
        t = torch.full((n,), pl_module.schedule.num_steps - 1, device=pl_module.device)
        y = torch.zeros(n, dtype=torch.long, device=pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        on_gpu = x.device.type == "cuda"  # CUDA runs asynchronously: time it synchronised
        with torch.no_grad(), network_precision(self.sampling.precision, x.device):
            if on_gpu:  # untimed: a first call at a new shape pays one-off costs there
                pl_module.net(x, t, y)
                torch.cuda.synchronize(x.device)
            begin = time.perf_counter()
            pl_module.net(x, t, y)
            if on_gpu:
                torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - begin
        pl_module.train(was_training)
        return seconds * self.sampling.steps

    @abstractmethod
    def on_ema_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sample or measure with `pl_module`, which holds the EMA weights now."""

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or batch_idx != 0 or dataloader_idx != 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        share = self.time_share
        if share.share is not None and share.calls == 0 and share.last_cost == 0.0:
            # Before the first capped call: estimate it here, on the device it will run on.
            with callback_work(self.time_share, one_off=True):
                estimate = self.estimate_call(pl_module)
            self.time_share.last_cost = estimate
        if not trainer.strategy.broadcast(self.time_share.allows(), src=0):
            self.time_share.skipped += 1
            log.info(
                "%s: skipped at epoch %d to stay within %s of the wall time (%s)",
                self.name, trainer.current_epoch, self.time_share.share, self.time_share.summary(),
            )  # fmt: skip
            return
        with callback_work(self.time_share):
            self.on_ema_validation(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log.info("%s: %s", self.name, self.time_share.summary())


class SampleGrid(EMAValidationCallback):
    """Every `every_n_epochs` epochs, write (and log to W&B) figures from the EMA weights: a
    grid of samples per class and, optionally, a progressive-denoising strip and attention maps.

    Sampling happens right after the first validation batch, when Lightning's weight averaging
    has swapped the EMA weights in (whatever the order of the callbacks), and once more at the
    end of fit, when the module holds the final EMA weights. `sampling` holds the sampler
    settings (conf/sampling/default.yaml's unless overridden); the noise is drawn from its seed,
    so the figures of different epochs start from the same noise. `max_time_share` (e.g. 0.05)
    caps the figures' share of the run's wall time (see EMAValidationCallback); null: no cap.
    """

    name = "sample_grid"

    def __init__(
        self,
        sampling: Mapping[str, Any] | SamplingSettings,
        every_n_epochs: int,
        n_per_class: int,
        denoising_frames: int | None,
        attention: bool,
        dirname: str = "samples",
        max_time_share: float | None = None,
    ) -> None:
        if every_n_epochs < 1 or n_per_class < 1:
            raise ValueError("callbacks.sample_grid: every_n_epochs and n_per_class must be >= 1.")
        self.every_n_epochs = every_n_epochs
        self.n_per_class = n_per_class
        self.sampling = as_settings(sampling, self.name)
        self.denoising_frames = denoising_frames
        self.attention = attention
        self.dirname = dirname
        self.time_share = TimeShare(max_time_share)
        self._last_written: tuple[int, str] | None = None  # (global step, file name prefix)

    def on_ema_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name = f"epoch{trainer.current_epoch:04d}-step{trainer.global_step:07d}"
        self._write(trainer, pl_module, name)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After WeightAveraging.on_train_end the module holds the final EMA weights. When the
        # last validation already drew them (same step, same noise), copy its files instead.
        # The final figures are the run's result: always written (and counted in its share).
        last = self._last_written
        with callback_work(self.time_share):
            if last is not None and last[0] == trainer.global_step:
                self._copy_as_final(Path(trainer.default_root_dir) / self.dirname, last[1])
            else:
                self._write(trainer, pl_module, "final")
        super().on_fit_end(trainer, pl_module)

    @rank_zero_only
    def _copy_as_final(self, out_dir: Path, name: str) -> None:
        for path in out_dir.glob(f"{name}*.png"):
            shutil.copyfile(path, out_dir / path.name.replace(name, "final", 1))

    @rank_zero_only
    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        was_training = pl_module.training
        gen = module_generator(pl_module)
        out_dir = Path(trainer.default_root_dir) / self.dirname
        out_dir.mkdir(parents=True, exist_ok=True)
        names = gen.class_names
        images, _ = gen.sample(n_per_class=self.n_per_class, settings=self.sampling)
        rows = list(images.split(self.n_per_class))  # one row of n images per class
        scale = max(1, 64 // gen.image_size)  # small images are shown enlarged
        figures.labelled_grid(rows, names, scale=scale).save(out_dir / f"{name}.png")
        logged = {"samples": ([make_grid(r, nrow=self.n_per_class) for r in rows], names)}
        if self.denoising_frames:
            strip, _ = model_figures.denoising_strip(
                gen, names, self.sampling, self.denoising_frames, scale=scale
            )
            strip.save(out_dir / f"{name}-denoising.png")
            logged["denoising"] = ([strip], ["x_t and predicted x_0 per class"])
        if self.attention and gen.net.attention_layers():
            figs = model_figures.attention_figures(gen, names, self.sampling, scale=scale)
            for cls, fig in figs.items():
                fig.save(inside(out_dir, f"{name}-attention-{cls}.png"))
            logged["attention"] = (list(figs.values()), list(figs))
        pl_module.train(was_training)
        self._last_written = (trainer.global_step, name)
        log.info("Wrote sample figures %s/%s*.png", out_dir, name)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key, (pictures, captions) in logged.items():
                    logger.log_image(
                        key=key,
                        images=pictures,
                        caption=[f"{c} ({name})" for c in captions],
                        step=trainer.global_step,
                    )


class ValidateAtMaxSteps(Callback):
    """Stop through `trainer.should_stop` at `max_steps`, so that a last validation (EMA loss,
    sample grid) and `last.ckpt` happen at the final step.

    Lightning ends a run that reaches `max_steps` mid-epoch without validating, so its
    `last.ckpt` would be the one of the previous epoch and a resume would silently repeat steps.
    A stop validates only in an epoch that `check_val_every_n_epoch` would validate, so at the
    last step that count is lifted (set to None: the run ends after this batch either way).
    """

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
            trainer.check_val_every_n_epoch = None  # Lightning reads it before validating
