"""`run(cfg)`: what sample.py does with a composed conf/sample.yaml.

Everything is checked (checkpoint, class names, steps, blend) before any image is generated.

Files are written only inside `out`: class folders `out/<class>/`, the blend's `out/blend/`,
and the figures `out/grid.png`, `sweep.png`, `denoising.png|gif`, `attention_<class>.png`,
`samples.json`. Class names are single plain names (checked when the checkpoint loads), and a
class named like one of these outputs (`blend`, `grid`, `samples`, `sweep`, `denoising`,
`attention...`, with or without extension) is refused before any work, so that no class's
files can overwrite another output.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress
from torchvision.utils import save_image

from facediff import tensor_figures as figures
from facediff.config_checks import check_sample_config
from facediff.diffusion.settings import SamplingSettings
from facediff.inference import model_figures
from facediff.inference.generator import Generator
from facediff.untrusted import UnsafeValueError, inside

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("blend", "grid", "samples", "sweep", "denoising")  # stems of what run() writes


def check_class_names(names: list[str]) -> None:
    """Refuse class names that would share a path with another output of sample.py."""
    clashes = [
        n for n in names if n.split(".")[0] in OUTPUT_NAMES or n.lower().startswith("attention")
    ]
    if clashes:
        raise UnsafeValueError(
            f"Class name(s) {clashes} clash with sample.py's own outputs ({list(OUTPUT_NAMES)}, "
            "attention_*): their folders would overwrite or mix with those files. Sample them "
            "from Python (facediff.inference.generator.Generator), or rename the classes."
        )


def check_config(cfg: DictConfig, gen: Generator) -> SamplingSettings:
    """Fail fast, naming the setting, before any work is done; returns the sampling settings."""
    settings = gen.settings(SamplingSettings.from_config(cfg, num_steps=gen.num_steps))
    for name in cfg.classes or []:
        gen.class_id(name)
    check_class_names(list(cfg.classes or gen.class_names))
    if cfg.n_per_class < 1 or cfg.batch_size < 1:
        raise ValueError("n_per_class and batch_size must be >= 1.")
    if cfg.blend is not None:
        gen.blend_weights(cfg.blend)
    if cfg.sweep is not None:
        gen.class_id(cfg.sweep.start)
        gen.class_id(cfg.sweep.end)
    if cfg.attention is not None:
        known = gen.net.attention_layers()
        if not known:
            raise ValueError("attention figures need a model with self-attention (this has none).")
        unknown = [name for name in cfg.attention.get("layers") or [] if name not in known]
        if unknown:
            raise ValueError(f"Unknown attention layers {unknown}; this model has {list(known)}.")
    return settings


def step_bar(progress: Progress, label: str, n_images: int, batch_size: int, steps: int) -> Any:
    """An `on_step` callback that advances a progress bar by one denoising step."""
    task = progress.add_task(label, total=math.ceil(n_images / batch_size) * steps)
    return lambda t, x_t, x0: progress.advance(task)


def write_samples(
    gen: Generator, cfg: DictConfig, settings: SamplingSettings, out: Path, progress: Progress
) -> dict:
    """Per-class images, grid.png and the records for samples.json."""
    names = list(cfg.classes or gen.class_names)
    run = {"settings": settings, "batch_size": cfg.batch_size}
    n_images = len(names) * cfg.n_per_class
    bar = step_bar(progress, "sampling steps", n_images, cfg.batch_size, settings.steps)
    images, labels = gen.sample(names, cfg.n_per_class, on_step=bar, **run)
    rows, grid_labels, files = [], [], []
    for name in names:
        picked = [i for i, label in enumerate(labels) if label == name]
        rows.append(images[picked])
        grid_labels.append(name)
    if cfg.blend is not None:
        bar = step_bar(progress, "blend steps", cfg.n_per_class, cfg.batch_size, settings.steps)
        blended, blend_labels = gen.sample(
            n_per_class=cfg.n_per_class, blend=cfg.blend, on_step=bar, **run
        )
        names.append("blend")
        rows.append(blended)
        grid_labels.append(blend_labels[0])
    for name, row in zip(names, rows, strict=True):
        folder = inside(out, name)  # class names were checked; this checks the joined path too
        folder.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(row):
            save_image(image, folder / f"{k:04d}.png")
            files.append({"file": f"{name}/{k:04d}.png", "class": name})
    figures.labelled_grid(rows, grid_labels, scale=cfg.grid_scale).save(out / "grid.png")
    return {"files": files, "blend": OmegaConf.to_container(cfg.blend) if cfg.blend else None}


def write_sweep(gen: Generator, cfg: DictConfig, settings: SamplingSettings, out: Path) -> None:
    sw = cfg.sweep
    images, alphas = gen.blend_sweep(
        sw.start, sw.end, sw.n_steps, sw.n_seeds, settings=settings, batch_size=cfg.batch_size
    )
    headers = [f"{sw.end} {a:.2f}" for a in alphas]
    grid = figures.labelled_grid(
        list(images),
        [f"seed {r}" for r in range(len(images))],
        scale=cfg.grid_scale,
        headers=headers,
    )
    grid.save(out / "sweep.png")


def write_denoising(gen: Generator, cfg: DictConfig, settings: SamplingSettings, out: Path) -> None:
    names = list(cfg.classes or gen.class_names)
    n_frames = int(cfg.denoising.get("n_frames", 10))
    strip, frames = model_figures.denoising_strip(
        gen, names, settings, n_frames, scale=cfg.grid_scale
    )
    strip.save(out / "denoising.png")
    figures.denoising_gif(frames, names, out / "denoising.gif", scale=cfg.grid_scale)


def write_attention(
    gen: Generator, cfg: DictConfig, settings: SamplingSettings, out: Path
) -> list[str]:
    att = cfg.attention
    names = list(cfg.classes or gen.class_names)
    figs = model_figures.attention_figures(
        gen,
        names,
        settings,
        layers=att.get("layers"),
        queries=att.get("queries") or model_figures.DEFAULT_QUERIES,
        heads=list(att.heads) if att.get("heads") is not None else None,
        scale=cfg.grid_scale,
    )
    for name, fig in figs.items():
        fig.save(inside(out, f"attention_{name}.png"))
    return [f"attention_{name}.png" for name in figs]


def run(cfg: DictConfig) -> Path:
    """Sample as configured; return the output folder."""
    check_sample_config(cfg)  # the values typed, before the checkpoint is read
    gen = Generator.from_checkpoint(cfg.ckpt, device=cfg.device)
    settings = check_config(cfg, gen)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with Progress() as progress:
        record = write_samples(gen, cfg, settings, out, progress)
    if cfg.sweep is not None:
        write_sweep(gen, cfg, settings, out)
    if cfg.denoising is not None:
        write_denoising(gen, cfg, settings, out)
    attention = write_attention(gen, cfg, settings, out) if cfg.attention is not None else []
    meta = {
        **gen.meta,
        **settings.to_dict(),
        "batch_size": cfg.batch_size,
        "image_size": gen.image_size,
        "class_names": gen.class_names,
        **record,
    }
    (out / "samples.json").write_text(json.dumps(meta, indent=2))
    figures = ["grid.png", "samples.json"]
    figures += ["sweep.png"] if cfg.sweep is not None else []
    figures += ["denoising.png", "denoising.gif"] if cfg.denoising is not None else []
    figures += attention
    log.info("Wrote %d images (a folder per class%s) and %s to %s", len(record["files"]),
             " and blend/" if cfg.blend is not None else "", ", ".join(figures), out)  # fmt: skip
    return out
