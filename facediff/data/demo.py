"""Built-in demo data: deterministic synthetic cartoon faces drawn with Pillow (no download).

Three classes differ only by one bold accessory: ``glasses`` (thick dark rims across the eyes),
``hat`` (a large coloured hat over the top of the head) and ``beard`` (a dark beard over the
lower face). Everything else (skin tone, hair colour, background, face size/position, eye and
mouth placement, clothing) is drawn from the same distribution for every class, so the
accessory is the only class signal.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from facediff.atomic import atomic_folder

DEMO_CLASSES: tuple[str, ...] = ("glasses", "hat", "beard")
MARKER_NAME = ".facediff_demo.json"
DEMO_VERSION = 1
SUPERSAMPLE = 4  # draw large, then downsample: smooth edges at any output size

_SKIN_STOPS = np.array([[255, 226, 200], [224, 172, 130], [176, 118, 78], [96, 60, 40]], float)
_HAIR = np.array(
    [[25, 20, 20], [70, 45, 25], [125, 85, 45], [215, 185, 115], [165, 75, 35], [165, 165, 165]],
    float,
)
_HAT = np.array(
    [[200, 30, 40], [30, 70, 200], [30, 160, 60], [235, 200, 30], [130, 40, 170], [240, 120, 20]],
    float,
)


def _colour(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[int, ...]:
    base = palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def _skin(rng: np.random.Generator) -> tuple[int, ...]:
    position = rng.uniform(0, len(_SKIN_STOPS) - 1)
    low = int(position)
    high = min(low + 1, len(_SKIN_STOPS) - 1)
    mix = _SKIN_STOPS[low] * (1 - (position - low)) + _SKIN_STOPS[high] * (position - low)
    return tuple(int(v) for v in np.clip(mix + rng.normal(0, 6, 3), 0, 255))


def draw_demo_face(class_name: str, index: int, size: int = 64, seed: int = 0) -> Image.Image:
    """Draw face number ``index`` of ``class_name``; identical inputs give identical pixels."""
    if class_name not in DEMO_CLASSES:
        raise ValueError(f"Unknown demo class {class_name!r}. Fix: use one of {DEMO_CLASSES}.")
    rng = np.random.default_rng([seed, DEMO_CLASSES.index(class_name), index])
    w = size * SUPERSAMPLE
    image = Image.new("RGB", (w, w), tuple(int(v) for v in rng.uniform(40, 225, 3)))
    draw = ImageDraw.Draw(image)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * w, y0 * w, x1 * w, y1 * w]

    cx, cy = 0.5 + rng.uniform(-0.06, 0.06), 0.53 + rng.uniform(-0.05, 0.05)
    rx = rng.uniform(0.2, 0.25)
    ry = rx * rng.uniform(1.18, 1.32)
    skin, hair = _skin(rng), _colour(rng, _HAIR, 10)
    shirt = tuple(int(v) for v in rng.uniform(30, 230, 3))
    eye_y = cy - ry * rng.uniform(0.08, 0.22)
    eye_dx = rx * rng.uniform(0.36, 0.48)
    eye_r = rx * rng.uniform(0.1, 0.14)
    mouth_y = cy + ry * rng.uniform(0.42, 0.55)
    mouth_w = rx * rng.uniform(0.3, 0.5)

    draw.ellipse(box(cx - rx * 2.0, cy + ry * 0.95, cx + rx * 2.0, cy + ry * 2.6), fill=shirt)
    draw.rectangle(box(cx - rx * 0.42, cy + ry * 0.5, cx + rx * 0.42, cy + ry * 1.1), fill=skin)
    draw.ellipse(box(cx - rx * 1.12, cy - ry * 1.14, cx + rx * 1.12, cy + ry * 0.4), fill=hair)
    draw.ellipse(box(cx - rx, cy - ry, cx + rx, cy + ry), fill=skin)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse(
            box(ex - eye_r * 1.3, eye_y - eye_r, ex + eye_r * 1.3, eye_y + eye_r),
            fill=(245, 245, 245),
        )
        draw.ellipse(
            box(ex - eye_r * 0.6, eye_y - eye_r * 0.6, ex + eye_r * 0.6, eye_y + eye_r * 0.6),
            fill=(30, 25, 25),
        )
    nose = tuple(max(0, c - 35) for c in skin)
    draw.line(box(cx, eye_y + ry * 0.1, cx, mouth_y - ry * 0.18), fill=nose, width=max(1, w // 64))

    if class_name == "beard":
        beard = tuple(int(v) for v in rng.uniform(15, 60, 3))
        # lower part of a slightly enlarged face ellipse, from just above the mouth line down
        start = math.asin(0.12)
        angles = np.linspace(start, math.pi - start, 48)
        outline = [(cx + rx * 1.04 * math.cos(a), cy + ry * 1.08 * math.sin(a)) for a in angles]
        draw.polygon([(x * w, y * w) for x, y in outline], fill=beard)
    lips = (200, 80, 80) if class_name == "beard" else (150, 40, 50)
    draw.line(box(cx - mouth_w, mouth_y, cx + mouth_w, mouth_y), fill=lips, width=max(2, w // 32))

    if class_name == "glasses":
        rim = tuple(int(v) for v in rng.uniform(0, 35, 3))
        thick = max(2, int(rx * w * 0.18))
        lens = rx * 0.3
        for side in (-1, 1):
            ex = cx + side * eye_dx
            draw.ellipse(
                box(ex - lens * 1.15, eye_y - lens, ex + lens * 1.15, eye_y + lens),
                outline=rim,
                width=thick,
            )
            edge = cx + side * rx
            draw.line(
                box(ex + side * lens * 1.1, eye_y, edge, eye_y - ry * 0.05), fill=rim, width=thick
            )
        draw.line(box(cx - eye_dx + lens, eye_y, cx + eye_dx - lens, eye_y), fill=rim, width=thick)
    elif class_name == "hat":
        hat = _colour(rng, _HAT, 18)
        brim_y = cy - ry * rng.uniform(0.38, 0.5)
        draw.rectangle(box(cx - rx * 0.95, cy - ry * 1.6, cx + rx * 0.95, brim_y), fill=hat)
        draw.ellipse(box(cx - rx * 0.95, cy - ry * 1.8, cx + rx * 0.95, cy - ry * 1.4), fill=hat)
        draw.ellipse(
            box(cx - rx * 1.55, brim_y - ry * 0.14, cx + rx * 1.55, brim_y + ry * 0.14), fill=hat
        )
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _params(n_per_class: int, size: int, seed: int) -> dict[str, Any]:
    return {
        "version": DEMO_VERSION,
        "classes": list(DEMO_CLASSES),
        "n_per_class": n_per_class,
        "size": size,
        "seed": seed,
    }


def _file_name(index: int, n_per_class: int) -> str:
    return f"{index:0{max(4, len(str(n_per_class - 1)))}d}.png"


def demo_is_complete(root: str | os.PathLike[str], n_per_class: int, size: int, seed: int) -> bool:
    """True when ``root`` holds a finished demo dataset written with these parameters."""
    root = Path(root)
    try:
        recorded = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if recorded != _params(n_per_class, size, seed):
        return False
    return all(
        (root / name / _file_name(n_per_class - 1, n_per_class)).is_file()
        and sum(1 for _ in (root / name).glob("*.png")) == n_per_class
        for name in DEMO_CLASSES
    )


def write_demo_dataset(
    root: str | os.PathLike[str], n_per_class: int = 300, size: int = 64, seed: int = 0
) -> Path:
    """Write ``root/<class>/0000.png ...`` once; later calls with the same parameters return at
    once. The data is written to a uniquely named sibling temp folder and renamed into place
    with the marker file inside (`facediff.atomic.atomic_folder`), so an interrupted run leaves
    no marker and is redone next time, and parallel runs never delete each other's work."""
    if n_per_class < 1 or size < 8:
        raise ValueError(
            f"Demo needs n_per_class >= 1 and size >= 8, got n_per_class={n_per_class}, "
            f"size={size}. Fix: e.g. demo={{n_per_class: 300, size: 64, seed: 0}}."
        )
    root = Path(root)
    if demo_is_complete(root, n_per_class, size, seed):
        return root
    if root.exists() and any(root.iterdir()) and not (root / MARKER_NAME).exists():
        raise FileExistsError(
            f"{root} already contains files that are not a facediff demo dataset; refusing to "
            "overwrite them. Fix: point the demo `root` at an empty or new folder."
        )
    # Each writer draws into its own temporary folder next to root, which then replaces an
    # outdated root in one rename; parallel jobs never delete or mix each other's files.
    with atomic_folder(root, lambda f: demo_is_complete(f, n_per_class, size, seed)) as partial:
        for class_name in DEMO_CLASSES:
            (partial / class_name).mkdir()
            for index in range(n_per_class):
                image = draw_demo_face(class_name, index, size, seed)
                image.save(partial / class_name / _file_name(index, n_per_class))
        (partial / MARKER_NAME).write_text(json.dumps(_params(n_per_class, size, seed), indent=1))
    return root
