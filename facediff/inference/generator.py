"""Sampling from a trained checkpoint from Python, without Hydra or Lightning.

    from facediff.inference.generator import Generator
    gen = Generator.from_checkpoint("outputs/train/<date>/checkpoints/last.ckpt")
    images, labels = gen.sample(classes=["indian"], n_per_class=4)            # the defaults
    images, labels = gen.sample(classes=["indian"], n_per_class=4, steps=50)  # one changed

Sampling settings are a `SamplingSettings` (facediff.diffusion.settings): pass one whole as
`settings=`, or leave it out to use conf/sampling/default.yaml's, and change single fields by
keyword. Images come back as float tensors in [0, 1], (N, 3, H, W). Sample i of a call draws
all of its noise from its own seed (derived from `seed` and i), so the same seed and settings
give the same images whatever the batch size. sample.py, evaluate.py and the training
callbacks use this class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from facediff.checkpoint import CheckpointError, load_checkpoint
from facediff.diffusion.objective import Objective, build_diffusion
from facediff.diffusion.sampling import check_fits, sample, sampling_precision
from facediff.diffusion.schedule import NoiseSchedule
from facediff.diffusion.settings import SamplingSettings
from facediff.models.registry import build_model
from facediff.untrusted import UnsafeValueError, check_names, check_plain

StepFn = Callable[[int, Tensor, Tensor], None]


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from (seed, sample index).

    numpy's SeedSequence mixes the pair into well-separated 32-bit seeds (torch's CPU generator
    keeps only 32 bits of its seed, so e.g. `(seed << 32) + i` would ignore `seed`).
    """
    states = [np.random.SeedSequence([seed, int(i)]).generate_state(1)[0] for i in indices]
    return [torch.Generator().manual_seed(int(s)) for s in states]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Generator:
    """A trained denoiser, its noise schedule and its class names, ready to sample."""

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        objective: Objective,
        class_names: Sequence[str],
        image_size: int,
        device: str | torch.device | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.schedule = schedule.to(self.device)
        self.objective = objective
        self.class_names = list(class_names)
        self.image_size = image_size
        self.meta = dict(meta or {})

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device | None = None
    ) -> Generator:
        """Load a facediff checkpoint (its EMA weights where it has them).

        Guaranteed: nothing the file names is imported or called. The file is unpickled with
        `weights_only=True` (tensors and plain containers only); the network class comes from
        facediff's registry (`facediff.models.registry.MODELS`), built from checked plain
        hyper-parameters (the full network config the checkpoint stores, or for older files the
        run's model config); the schedule and objective from checked plain values; class names
        must be plain
        file names (no '/', '\\', NUL, leading '.'). Anything else raises a CheckpointError
        saying what was refused and what to do, before any network is built.
        """
        ckpt = load_checkpoint(path)
        hp = ckpt["hyper_parameters"]
        try:
            class_names = check_names(hp.get("class_names") or [], "Class name")
            diffusion = check_plain(hp.get("diffusion"), "diffusion", mappings=True)
            image_size = hp.get("image_size")
            if not class_names or not isinstance(image_size, int) or isinstance(image_size, bool):
                raise UnsafeValueError("it lacks class_names or an integer image_size")
            if not isinstance(diffusion, dict):
                raise UnsafeValueError("its diffusion config is not a mapping")
            model = ckpt["facediff"].get("model") or hp.get("model")
            net = build_model(model, image_size, len(class_names))
            schedule, objective = build_diffusion(diffusion)
        except (ValueError, TypeError) as err:  # UnsafeValueError, or values the classes refuse
            raise CheckpointError(
                f"Refusing checkpoint {path}: {err} Only checkpoints written by facediff's "
                "train.py load; retrain, or fix the config stored in the file."
            ) from err
        weights = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        try:
            net.load_state_dict(weights)
        except RuntimeError as err:
            raise CheckpointError(
                f"The weights in {path} do not fit the model its own config describes: {err}"
            ) from err
        meta = {
            "checkpoint": str(path),
            "weights": "ema" if "current_model_state" in ckpt else "raw (no EMA in checkpoint)",
            "global_step": ckpt.get("global_step"),
            "data": hp.get("data"),  # the training run's data config (evaluate.py rebuilds it)
        }
        return cls(net, schedule, objective, class_names, image_size, device, meta)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def class_id(self, name: str) -> int:
        """Index of a class name; a clear error listing the known names otherwise."""
        if name not in self.class_names:
            raise ValueError(f"Unknown class {name!r}; this model knows {self.class_names}.")
        return self.class_names.index(name)

    def blend_weights(self, blend: Mapping[str, float]) -> Tensor:
        """Class weights (K,) from {name: weight}: non-negative, normalised to sum to 1."""
        weights = torch.zeros(len(self.class_names))
        for name, w in blend.items():
            if float(w) < 0:
                raise ValueError(f"Blend weights must be >= 0, got {name}: {w}.")
            weights[self.class_id(name)] = float(w)
        if weights.sum() <= 0:
            raise ValueError(f"Blend {dict(blend)} has no positive weight.")
        return weights / weights.sum()

    def settings(
        self, settings: SamplingSettings | None = None, **changes: Any
    ) -> SamplingSettings:
        """`settings` (None: conf/sampling/default.yaml's) with `changes`, checked against T;
        precision "auto" comes back as what it means on this generator's device, so that
        samples.json and evaluate.py's report name the precision that ran."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(SamplingSettings)})
        if unknown:
            raise TypeError(f"Unknown sampling settings {unknown}; see SamplingSettings.")
        base = SamplingSettings.defaults() if settings is None else settings
        settings = SamplingSettings.from_config(changes, base, num_steps=self.num_steps)
        check_fits(settings, self.schedule, self.objective)
        return settings.replace(precision=sampling_precision(settings.precision, self.device))

    @torch.no_grad()
    def generate(
        self,
        y: Tensor,
        sample_ids: Sequence[int],
        settings: SamplingSettings,
        batch_size: int = 64,
        on_step: StepFn | None = None,
    ) -> Tensor:
        """Images in [0, 1] for conditions `y` ((N,) ids or (N, K) weights); sample n's noise
        comes from (settings.seed, sample_ids[n])."""
        check_fits(settings, self.schedule, self.objective)
        if len(y) != len(sample_ids):
            raise ValueError(f"{len(y)} conditions for {len(sample_ids)} sample ids.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        out = []
        shape = (3, self.image_size, self.image_size)
        for start in range(0, len(y), batch_size):
            ids = list(sample_ids[start : start + batch_size])
            gens = sample_generators(settings.seed, ids)
            x_T = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device)
            images = sample(
                self.net,
                self.schedule,
                self.objective,
                y[start : start + batch_size].to(self.device),
                x_T,
                settings,
                generator=gens,
                on_step=on_step,
            )
            out.append(images.add(1).div(2).cpu())
        return torch.cat(out)

    def sample(
        self,
        classes: Sequence[str] | None = None,
        n_per_class: int = 1,
        blend: Mapping[str, float] | None = None,
        settings: SamplingSettings | None = None,
        batch_size: int = 64,
        on_step: StepFn | None = None,
        **changes: Any,
    ) -> tuple[Tensor, list[str]]:
        """`n_per_class` images of each class (default: all), or of one blend of classes.

        Returns (images (N,3,H,W) in [0,1], the label of each image). `settings` and `changes`
        (sampler, steps, guidance, eta, seed, spacing) as in `Generator.settings`.
        """
        settings = self.settings(settings, **changes)
        if n_per_class < 1:
            raise ValueError(f"n_per_class must be >= 1, got {n_per_class}.")
        run = {"settings": settings, "batch_size": batch_size, "on_step": on_step}
        if blend is not None:
            w = self.blend_weights(blend)
            label = " + ".join(f"{n} {float(w[self.class_id(n)]):.2f}" for n in blend)
            y = w.expand(n_per_class, -1).clone()
            return self.generate(y, range(n_per_class), **run), [label] * n_per_class
        names = list(self.class_names if classes is None else classes)
        ids = torch.tensor([self.class_id(n) for n in names]).repeat_interleave(n_per_class)
        labels = [n for n in names for _ in range(n_per_class)]
        return self.generate(ids, range(len(ids)), **run), labels

    def blend_sweep(
        self,
        start: str,
        end: str,
        n_steps: int = 8,
        n_seeds: int = 4,
        settings: SamplingSettings | None = None,
        batch_size: int = 64,
        **changes: Any,
    ) -> tuple[Tensor, list[float]]:
        """Walk from class `start` to class `end` in `n_steps` blends on fixed noise.

        Returns (images (n_seeds, n_steps, 3, H, W), the weight of `end` at each step): row r
        uses the same noise for every step, so only the class blend changes along a row.
        """
        settings = self.settings(settings, **changes)
        if n_steps < 2 or n_seeds < 1:
            raise ValueError("A blend sweep needs n_steps >= 2 and n_seeds >= 1.")
        a, b = self.class_id(start), self.class_id(end)
        alphas = torch.linspace(0, 1, n_steps)
        y = torch.zeros(n_seeds, n_steps, len(self.class_names))
        y[:, :, a] = 1 - alphas
        y[:, :, b] += alphas
        ids = [r for r in range(n_seeds) for _ in range(n_steps)]
        images = self.generate(y.reshape(n_seeds * n_steps, -1), ids, settings, batch_size)
        return images.reshape(n_seeds, n_steps, *images.shape[1:]), alphas.tolist()
