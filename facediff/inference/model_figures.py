"""Figures that need a model: progressive denoising and attention maps, from a `Generator`.

sample.py and the training callback both call these; `facediff.tensor_figures` turns tensors into
pictures and knows nothing of models.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torch import Tensor

from facediff import tensor_figures as figures
from facediff.diffusion.settings import SamplingSettings
from facediff.inference.generator import Generator

DEFAULT_QUERIES = ((0.35, 0.35), (0.35, 0.65), (0.75, 0.5))  # (y, x): two eyes and the mouth


def denoising_frames(
    gen: Generator, names: Sequence[str], settings: SamplingSettings
) -> list[tuple[int, Tensor, Tensor]]:
    """(t, x_t, x0_hat) in [0, 1] at every step, for one sample of each class."""
    frames: list[tuple[int, Tensor, Tensor]] = []

    def record(t: int, x_t: Tensor, x0: Tensor) -> None:
        frames.append((t, x_t.add(1).div(2).clamp(0, 1).cpu(), x0.add(1).div(2).cpu()))

    gen.sample(list(names), 1, settings=settings, batch_size=len(names), on_step=record)
    return frames


def denoising_strip(
    gen: Generator,
    names: Sequence[str],
    settings: SamplingSettings,
    n_frames: int = 10,
    scale: int = 1,
) -> tuple[Image.Image, list[tuple[int, Tensor, Tensor]]]:
    """The strip figure of `n_frames` chosen steps, and all the frames (for a GIF)."""
    frames = denoising_frames(gen, names, settings)
    chosen = figures.select_frames(frames, min(n_frames, len(frames)))
    return figures.denoising_strip(chosen, list(names), scale=scale), frames


def attention_figures(
    gen: Generator,
    names: Sequence[str],
    settings: SamplingSettings,
    layers: Sequence[str] | None = None,
    queries: Sequence[Sequence[float]] = DEFAULT_QUERIES,
    heads: Sequence[int] | None = None,
    scale: int = 1,
) -> dict[str, Image.Image]:
    """{class: figure} of the self-attention weights at the last (least noisy) step.

    With guidance the network sees a batch of 2B (conditional half first), so rows 0..B-1 of
    the captured maps are the conditional model's attention for the B images shown.
    """
    layers = list(layers or gen.net.attention_layers())
    with gen.net.capture_attention() as maps:
        images, _ = gen.sample(list(names), 1, settings=settings, batch_size=len(names))
    qs = [(float(q[0]), float(q[1])) for q in queries]
    return {
        name: figures.attention_figure(
            images[b], {k: v[b] for k, v in maps.items()}, layers, qs, heads, scale=scale
        )
        for b, name in enumerate(names)
    }
