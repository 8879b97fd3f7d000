"""How to sample: one validated settings object, whose defaults live in conf/sampling/default.yaml.

sample.py and evaluate.py compose that node at their top level (`sampler=ddim steps=50 ...`),
the training callbacks under `callbacks.<name>.sampling`; `SamplingSettings.defaults()` reads
the same file for Python callers. The code passes a `SamplingSettings` whole; nothing else
carries a default sampler, step count or guidance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

SAMPLERS = ("ddpm", "ddim", "dpmpp")
SPACINGS = ("trailing", "linspace")  # see sampling.spaced_timesteps
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # see sampling.sampling_precision
DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "conf" / "sampling" / "default.yaml"


@dataclass(frozen=True)
class SamplingSettings:
    """sampler: "ddpm" (ancestral) | "ddim" | "dpmpp" (DPM-Solver++ 2M);
    steps: number of denoising steps, 1..T (T is checked by `check_steps` where it is known);
    guidance: classifier-free guidance w >= 0, uncond + w (cond - uncond); 1 = none;
    eta: DDIM and DPM-Solver++ (ddpm ignores it): 0 deterministic (the ODE) .. 1 as noisy as
        DDPM (DPM-Solver++'s SDE form);
    seed: the noise seed (sample i draws from (seed, i));
    spacing: which `steps` of the T timesteps: "trailing" | "linspace" (sampling.spaced_timesteps);
    precision: the network's forward passes: "auto" | "fp32" | "bf16" | "fp16" (autocast; the
        sampler's own arithmetic stays fp32); "auto" is bf16 where the device computes it fast
        and fp32 elsewhere (sampling.sampling_precision).
    """

    sampler: str
    steps: int
    guidance: float
    eta: float
    seed: int
    spacing: str
    precision: str

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {self.sampler!r}; choose one of {SAMPLERS}.")
        if self.spacing not in SPACINGS:
            raise ValueError(f"Unknown spacing {self.spacing!r}; choose one of {SPACINGS}.")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"Unknown sampling precision {self.precision!r}; choose one of {PRECISIONS}."
            )
        for name in ("steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"sampling {name} must be an integer, got {value!r}.")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1 (and <= the model's T), got {self.steps}.")
        for name in ("guidance", "eta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"sampling {name} must be a number, got {value!r}.")
            if not math.isfinite(value):
                raise ValueError(f"sampling {name} must be finite, got {value!r}.")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}.")
        if self.guidance < 0:  # w < 0 steers away from the class the images are filed under
            raise ValueError(
                f"guidance must be >= 0 (0: the unconditional model, 1: none, > 1: stronger), "
                f"got {self.guidance}."
            )

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        base: SamplingSettings | None = None,
        num_steps: int | None = None,
    ) -> SamplingSettings:
        """Settings from a mapping holding every key (other keys are ignored), or only some
        of them on top of `base` (e.g. a sweep point {sampler: ddim, steps: 10}); checked
        against the model's T when `num_steps` is given."""
        names = [f.name for f in dataclasses.fields(cls)]
        given = {k: config[k] for k in names if k in config}
        if num_steps is not None and "steps" in given:
            check_steps(given["steps"], num_steps)
        if base is not None:
            settings = dataclasses.replace(base, **given)
        else:
            missing = [k for k in names if k not in given]
            if missing:
                raise ValueError(
                    f"Sampling settings lack {missing} (see conf/sampling/default.yaml)."
                )
            settings = cls(**given)
        return settings if num_steps is None else settings.check_steps(num_steps)

    @classmethod
    def defaults(cls) -> SamplingSettings:
        """The defaults of conf/sampling/default.yaml (the only place they are written)."""
        return _load_defaults()

    def replace(self, **changes: Any) -> SamplingSettings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def check_steps(self, num_steps: int) -> SamplingSettings:
        """Refuse more steps than the model's T; returns self."""
        check_steps(self.steps, num_steps)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_steps(steps: Any, num_steps: int) -> None:
    """Refuse a step count outside 1..T, naming T."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in 1..{num_steps} (the model's T), got {steps!r}.")


@cache
def _load_defaults() -> SamplingSettings:
    from omegaconf import OmegaConf  # only Python callers without settings need it

    if not DEFAULTS_FILE.is_file():
        raise FileNotFoundError(
            f"{DEFAULTS_FILE} (the sampling defaults) is missing: pass a SamplingSettings "
            "explicitly, or run from a facediff checkout."
        )
    return SamplingSettings.from_config(OmegaConf.to_container(OmegaConf.load(DEFAULTS_FILE)))
