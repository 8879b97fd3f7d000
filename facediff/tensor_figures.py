"""Figures from image tensors: labelled grids, denoising strips and GIFs, attention overlays.

Pure functions, tensors in and PIL images (or a GIF file) out. Images are float tensors in [0, 1]
of shape (N, 3, H, W) or (3, H, W), on any device; values outside [0, 1] are clamped. Text uses
Pillow's built-in font (black on white) and is not upscaled with the images, so it stays crisp.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

Frame = tuple[int, Tensor, Tensor]  # (t, x_t, x0_hat), both (B, 3, H, W) in [0, 1]
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
T = TypeVar("T")

TEXT_PAD = 4  # white pixels around text in the margins
# Jet-like ramp, evenly spaced stops: dark blue (0, cold) -> blue -> cyan -> yellow -> red (1, hot).
_RAMP = torch.tensor([[0, 0, 0.5], [0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])


# ----------------------------------------------------------------------------------------- text
@functools.cache
def _font(size: int) -> Font:
    """Pillow's built-in font at `size` px (FreeType), else its small fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


def _text_width(text: str, font: Font) -> int:
    return math.ceil(font.getlength(text))


def _line_height(font: Font) -> int:
    return font.getbbox("Ag|")[3] + 2


def _wrap(text: str, font: Font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word longer than that keeps a line of its own."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_width(f"{lines[-1]} {word}", font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _as_batch(images: Tensor, what: str) -> Tensor:
    """(N, 3, H, W) or (3, H, W) -> (N, 3, H, W) float on the CPU, clamped to [0, 1]."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{what}: expected images (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}."
        )
    return images.detach().float().cpu().clamp(0, 1)


# ----------------------------------------------------------------------------------------- grids
def labelled_grid(
    rows: Sequence[Tensor],
    labels: Sequence[str],
    pad: int = 2,
    scale: int = 1,
    headers: Sequence[str] | None = None,
) -> Image.Image:
    """A grid with one row of cells per entry of `rows` ((n_i, 3, H, W) each), each row labelled
    on the left and, with `headers` (one per column), each column titled above.

    Short rows are padded with blank (white) cells. `scale` upsamples the cells (NEAREST). Size:
    width  = margin + cols * (W * scale + pad) + pad, margin fitted to the longest label;
    height = header band + len(rows) * (H * scale + pad) + pad, headers word-wrapped to a cell.
    """
    if not rows:
        raise ValueError("labelled_grid: no rows given.")
    if len(labels) != len(rows):
        raise ValueError(f"labelled_grid: {len(labels)} labels for {len(rows)} rows.")
    if scale < 1 or pad < 0:
        raise ValueError(f"labelled_grid: need scale >= 1 and pad >= 0, got {scale} and {pad}.")
    batches = [_as_batch(row, f"labelled_grid row {i}") for i, row in enumerate(rows)]
    sizes = sorted({tuple(b.shape[-2:]) for b in batches})
    if len(sizes) != 1:
        raise ValueError(f"labelled_grid: rows hold images of different sizes {sizes}.")
    (h, w), n_cols = sizes[0], max(len(b) for b in batches)
    if n_cols == 0:
        raise ValueError("labelled_grid: every row is empty.")
    if headers is not None and len(headers) != n_cols:
        raise ValueError(f"labelled_grid: {len(headers)} headers for {n_cols} columns.")

    blank = torch.ones(1, 3, h, w)
    cells = torch.cat([torch.cat([b, blank.expand(n_cols - len(b), -1, -1, -1)]) for b in batches])
    cells = F.interpolate(cells, scale_factor=scale, mode="nearest") if scale > 1 else cells
    if len(cells) == 1:  # make_grid returns a lone image unpadded
        grid = F.pad(cells[0], (pad, pad, pad, pad), value=1.0)
    else:
        grid = make_grid(cells, nrow=n_cols, padding=pad, pad_value=1.0)  # (3, gh, gw)
    grid_image = to_pil_image(grid)

    cell_h, cell_w = h * scale, w * scale
    font = _font(min(16, max(10, min(cell_h, cell_w) // 5)))  # text grows a little with cells
    line_h = _line_height(font)
    margin = max(_text_width(label, font) for label in labels) + 2 * TEXT_PAD
    wrapped = [_wrap(text, font, cell_w - 2) for text in headers or []]
    top = max(len(lines) for lines in wrapped) * line_h + 2 * TEXT_PAD if wrapped else 0

    canvas = Image.new("RGB", (margin + grid_image.width, top + grid_image.height), "white")
    canvas.paste(grid_image, (margin, top))
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(labels):
        y = top + pad + r * (cell_h + pad) + (cell_h - line_h) // 2
        draw.text((TEXT_PAD, y), label, fill="black", font=font)
    for c, lines in enumerate(wrapped):  # bottom-aligned, centred over the column
        x = margin + pad + c * (cell_w + pad) + cell_w // 2
        for k, line in enumerate(lines):
            y = top - TEXT_PAD - (len(lines) - k) * line_h
            draw.text((x - _text_width(line, font) // 2, y), line, fill="black", font=font)
    return canvas


# ------------------------------------------------------------------------------------ denoising
def _check_frames(frames: Sequence[Frame], labels: Sequence[str], what: str) -> list[Frame]:
    if not frames:
        raise ValueError(f"{what}: no frames given.")
    checked: list[Frame] = []
    for t, x_t, x0 in frames:
        x_t, x0 = _as_batch(x_t, f"{what} x_t"), _as_batch(x0, f"{what} x0_hat")
        if x_t.shape != x0.shape or (checked and x_t.shape != checked[0][1].shape):
            raise ValueError(
                f"{what}: frame t={t} has x_t {tuple(x_t.shape)} and x0_hat {tuple(x0.shape)}; "
                "every frame needs the same (B, 3, H, W)."
            )
        checked.append((int(t), x_t, x0))
    if len(labels) != len(checked[0][1]):
        raise ValueError(f"{what}: {len(labels)} labels for {len(checked[0][1])} samples.")
    return checked


def select_frames(frames: Sequence[T], n: int) -> list[T]:
    """`n` frames evenly spaced in `frames`, the first and last always included (n = 1: the
    last, the finished sample; n >= len(frames): all of them)."""
    if n < 1:
        raise ValueError(f"select_frames: n must be >= 1, got {n}.")
    if n >= len(frames):
        return list(frames)
    if n == 1:
        return [frames[-1]]
    last, gaps = len(frames) - 1, n - 1
    # round-half-up of i * last / gaps in integers: distinct indices because last >= gaps
    return [frames[(2 * i * last + gaps) // (2 * gaps)] for i in range(n)]


def denoising_strip(
    frames: Sequence[Frame], labels: Sequence[str], scale: int = 1, pad: int = 2
) -> Image.Image:
    """For each sample b: a row of x_t and a row of x0_hat across the frames, titled "t=<t>",
    rows labelled "<label> x_t" / "<label> x0". Size: 2 * B rows by len(frames) columns."""
    checked = _check_frames(frames, labels, "denoising_strip")
    rows, row_labels = [], []
    for b, label in enumerate(labels):
        rows += [torch.stack([f[1][b] for f in checked]), torch.stack([f[2][b] for f in checked])]
        row_labels += [f"{label} x_t", f"{label} x0"]
    headers = [f"t={t}" for t, _, _ in checked]
    return labelled_grid(rows, row_labels, pad=pad, scale=scale, headers=headers)


def denoising_gif(
    frames: Sequence[Frame],
    labels: Sequence[str],
    path: str | Path,
    duration_ms: int = 120,
    scale: int = 1,
    hold_ms: int = 1500,
    max_frames: int | None = 100,
) -> Path:
    """Write an animated GIF (looping) whose frame k shows x_t and x0_hat of step k for all
    samples side by side; the last frame is held for `hold_ms`. More than `max_frames` frames
    (e.g. 1000 DDPM steps) are thinned with `select_frames`. Returns the path."""
    checked = _check_frames(frames, labels, "denoising_gif")
    if max_frames is not None:
        checked = select_frames(checked, max(max_frames, 2))
    images = [
        labelled_grid([x_t, x0], [f"x_t  t={t}", "x0"], scale=scale, headers=labels)
        for t, x_t, x0 in checked
    ]
    # label widths vary with t: give every frame the largest size, content top-left
    size = (max(im.width for im in images), max(im.height for im in images))
    padded = []
    for im in images:
        canvas = Image.new("RGB", size, "white")
        canvas.paste(im, (0, 0))
        padded.append(canvas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [duration_ms] * (len(padded) - 1) + [hold_ms]
    padded[0].save(
        path, save_all=True, append_images=padded[1:], duration=durations, loop=0, optimize=False
    )
    return path


# ------------------------------------------------------------------------------------ attention
def colormap(values: Tensor) -> Tensor:
    """Jet-like colours for values in [0, 1]: (...) -> (3, ...); 0 dark blue, 1 red."""
    ramp = _RAMP.to(values.device)
    pos = values.float().clamp(0, 1) * (len(ramp) - 1)
    i = pos.floor().long().clamp(max=len(ramp) - 2)
    frac = (pos - i).unsqueeze(-1)  # (..., 1)
    colours = torch.lerp(ramp[i], ramp[i + 1], frac)  # (..., 3)
    return colours.movedim(-1, 0)


def query_token(query: tuple[float, float], r: int) -> int:
    """Index of the token at relative position (qy, qx) in [0, 1]^2 of an r x r token grid."""
    if len(query) != 2 or not all(0.0 <= q <= 1.0 for q in query):
        raise ValueError(f"query must be (qy, qx) with both in [0, 1], got {tuple(query)}.")
    iy, ix = (min(math.floor(q * r), r - 1) for q in query)  # q = 1.0 is the last token
    return iy * r + ix


def attention_overlay(
    image: Tensor,
    weights: Tensor,
    query: tuple[float, float],
    heads: Sequence[int] | None = None,
    alpha: float = 0.6,
) -> list[Tensor]:
    """Where the token at `query` attends: one (3, H, W) image per head in `heads` (None: one,
    the mean over heads), the colormapped attention blended over `image` with weight `alpha`
    and the query marked with a white cross.

    weights: (heads, r*r, r*r) softmax weights of an attention layer (one sample) whose token
    grid r may be coarser than the image. The query's row is upsampled bilinearly to (H, W) and
    then normalised to [0, 1] per map, so every map spans the whole colour ramp.
    """
    image = _as_batch(image, "attention_overlay image")[0]  # (3, H, W)
    if weights.dim() != 3 or weights.shape[1] != weights.shape[2]:
        raise ValueError(
            f"attention_overlay: weights must be (heads, HW, HW) for one sample, got "
            f"{tuple(weights.shape)}; index the sample of a batch first."
        )
    n_heads, n_tokens = weights.shape[0], weights.shape[1]
    r = math.isqrt(n_tokens)
    if r * r != n_tokens:
        raise ValueError(f"attention_overlay: {n_tokens} tokens is not a square grid r * r.")
    if heads is not None and (not heads or any(not 0 <= h < n_heads for h in heads)):
        raise ValueError(f"attention_overlay: heads {list(heads)} not in 0..{n_heads - 1}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"attention_overlay: alpha must be in [0, 1], got {alpha}.")
    row = weights[:, query_token(query, r)].detach().float().cpu()  # (heads, r*r)
    row = row[list(heads)] if heads is not None else row.mean(0, keepdim=True)  # (K, r*r)

    h, w = image.shape[-2:]
    maps = F.interpolate(row.view(-1, 1, r, r), size=(h, w), mode="bilinear", align_corners=False)
    low = maps.amin(dim=(2, 3), keepdim=True)
    high = maps.amax(dim=(2, 3), keepdim=True)
    maps = ((maps - low) / (high - low).clamp_min(1e-12))[:, 0]  # (K, H, W) in [0, 1]

    py, px = (min(math.floor(q * n), n - 1) for q, n in zip(query, (h, w), strict=True))
    arm = max(1, min(h, w) // 16)
    overlays = []
    for m in maps:
        out = torch.lerp(image, colormap(m), alpha)  # (3, H, W)
        out[:, py, max(px - arm, 0) : px + arm + 1] = 1.0
        out[:, max(py - arm, 0) : py + arm + 1, px] = 1.0
        overlays.append(out)
    return overlays


def attention_figure(
    image: Tensor,
    maps: dict[str, Tensor],
    layers: Sequence[str],
    queries: Sequence[tuple[float, float]],
    heads: Sequence[int] | None = None,
    scale: int = 1,
    alpha: float = 0.6,
) -> Image.Image:
    """One row per (layer, query), labelled "<layer> q=(qy,qx)": the image, then its overlays
    (one per head in `heads`, or the mean over heads). maps[layer]: (heads, HW, HW) of one
    sample."""
    if not layers or not queries:
        raise ValueError("attention_figure: need at least one layer and one query.")
    missing = [layer for layer in layers if layer not in maps]
    if missing:
        raise ValueError(f"attention_figure: no maps for layers {missing}; have {list(maps)}.")
    base = _as_batch(image, "attention_figure image")[0]  # (3, H, W)
    rows, labels = [], []
    for layer in layers:
        for query in queries:
            overlays = attention_overlay(base, maps[layer], query, heads, alpha)
            rows.append(torch.stack([base, *overlays]))
            labels.append(f"{layer} q=({query[0]:.2f},{query[1]:.2f})")
    columns = [f"head {h}" for h in heads] if heads is not None else ["mean of heads"]
    return labelled_grid(rows, labels, scale=scale, headers=["image", *columns])
