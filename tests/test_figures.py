"""facediff.tensor_figures: grid geometry, labels, denoising strip and GIF, attention overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facediff import tensor_figures as figures

H = W = 8
PAD = 2
COLOUR = (0.2, 0.6, 0.9)  # not grey, so anti-aliased text never matches it
OTHER = (0.9, 0.3, 0.1)


def solid(n: int, colour: tuple[float, float, float] = COLOUR, size: int = H) -> torch.Tensor:
    """(n, 3, size, size) images of one colour."""
    return torch.tensor(colour).view(1, 3, 1, 1).expand(n, 3, size, size).clone()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)  # (h, w, 3)


def colour_box(image: Image.Image, colour: tuple[float, float, float]) -> tuple[int, int]:
    """(height, width) of the bounding box of the pixels of `colour` (as to_pil_image writes it)."""
    target = (np.array(colour) * 255).astype(int)
    ys, xs = np.nonzero((np.abs(pixels(image) - target) <= 1).all(-1))
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def frames_of(n_frames: int, b: int = 2) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (999 - 100 * k, torch.rand(b, 3, H, W, generator=g), torch.rand(b, 3, H, W, generator=g))
        for k in range(n_frames)
    ]


@pytest.fixture
def ragged_rows() -> list[torch.Tensor]:
    return [solid(3), solid(1), solid(2)]


# ------------------------------------------------------------------------------- labelled_grid
def test_grid_size_is_margin_plus_cells(ragged_rows):
    image = figures.labelled_grid(ragged_rows, ["a", "bb", "ccc"], pad=PAD)
    grid_w, grid_h = 3 * (W + PAD) + PAD, 3 * (H + PAD) + PAD
    margin = image.width - grid_w
    assert image.height == grid_h
    assert margin > 0
    assert colour_box(image, COLOUR) == (grid_h - 2 * PAD, grid_w - 2 * PAD)

    scaled = figures.labelled_grid(ragged_rows, ["a", "bb", "ccc"], pad=PAD, scale=3)
    assert scaled.size == (margin + 3 * (3 * W + PAD) + PAD, 3 * (3 * H + PAD) + PAD)


def test_short_rows_are_padded_with_blank_cells(ragged_rows):
    image = figures.labelled_grid(ragged_rows, ["a", "b", "c"], pad=PAD)
    px = pixels(image)
    x0 = image.width - (3 * (W + PAD) + PAD)  # left edge of the grid

    def cell(r: int, c: int) -> np.ndarray:
        y, x = PAD + r * (H + PAD), x0 + PAD + c * (W + PAD)
        return px[y : y + H, x : x + W]

    assert (np.abs(cell(1, 0) - np.array(COLOUR) * 255) <= 1).all()
    assert (cell(1, 1) == 255).all() and (cell(1, 2) == 255).all()
    assert (cell(2, 2) == 255).all() and not (cell(2, 1) == 255).all()


def test_labels_are_drawn_in_the_margin(ragged_rows):
    image = figures.labelled_grid(ragged_rows, ["glasses", "", "beard"], pad=PAD, scale=2)
    px = pixels(image)
    margin = image.width - (3 * (2 * W + PAD) + PAD)
    for r, has_text in enumerate([True, False, True]):
        band = px[PAD + r * (2 * H + PAD) : (r + 1) * (2 * H + PAD), :margin]
        assert (band < 128).any() == has_text  # dark text on white


def test_margin_fits_the_longest_label(ragged_rows):
    short = figures.labelled_grid(ragged_rows, ["a", "b", "c"])
    long = figures.labelled_grid(ragged_rows, ["a", "a much longer label", "c"])
    assert long.width > short.width + 50


def test_scale_upsamples_with_nearest():
    image = torch.zeros(1, 3, 2, 2)
    image[0, :, 0, 1] = 1.0  # one white pixel top right
    out = pixels(figures.labelled_grid([image, solid(1, size=2)], ["x", "y"], pad=0, scale=4))
    cell = out[:8, out.shape[1] - 8 :]
    assert (cell[:4, 4:] == 255).all() and (cell[:4, :4] == 0).all() and (cell[4:] == 0).all()


def test_headers_add_a_band_with_text_over_each_column(ragged_rows):
    plain = figures.labelled_grid(ragged_rows, ["a", "b", "c"], scale=4)
    titled = figures.labelled_grid(ragged_rows, ["a", "b", "c"], scale=4, headers=["x", "y", "z"])
    band = titled.height - plain.height
    assert titled.width == plain.width and band > 0
    px = pixels(titled)[:band, titled.width - 3 * (4 * W + PAD) - PAD :]
    for c in range(3):
        assert (px[:, PAD + c * (4 * W + PAD) : (c + 1) * (4 * W + PAD)] < 128).any()


def test_single_image_grid_is_padded():
    image = figures.labelled_grid([solid(1)], ["only"], pad=PAD)
    assert image.height == H + 2 * PAD
    assert colour_box(image, COLOUR) == (H, W)


def test_out_of_range_values_and_3d_rows_are_accepted():
    image = figures.labelled_grid([solid(1)[0] * 3 - 1, solid(2)], ["a", "b"])
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": ["a"]}, "1 labels for 2 rows"),
        ({"headers": ["x"]}, "1 headers for 2 columns"),
        ({"rows": [solid(2), solid(1, size=4)]}, "different sizes"),
        ({"rows": [torch.rand(2, 1, H, W), solid(1)]}, r"\(N, 3, H, W\)"),
        ({"rows": []}, "no rows"),
    ],
)
def test_grid_rejects_bad_input(kwargs, message):
    args = {"rows": [solid(2), solid(1)], "labels": ["a", "b"], **kwargs}
    if not args["rows"]:
        args["labels"] = []
    with pytest.raises(ValueError, match=message):
        figures.labelled_grid(**args)


# ----------------------------------------------------------------------------------- denoising
@pytest.mark.parametrize(("length", "n"), [(10, 4), (25, 10), (7, 7), (2, 2), (1000, 13), (5, 3)])
def test_select_frames_is_evenly_spaced_with_both_ends(length, n):
    chosen = figures.select_frames(list(range(length)), n)
    gaps = np.diff(chosen)
    assert len(chosen) == n and chosen[0] == 0 and chosen[-1] == length - 1
    assert (gaps > 0).all() and gaps.max() - gaps.min() <= 1


def test_select_frames_edge_cases():
    assert figures.select_frames([1, 2, 3], 1) == [3]
    assert figures.select_frames([1, 2, 3], 10) == [1, 2, 3]
    assert figures.select_frames(list(range(10)), 4) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="n must be >= 1"):
        figures.select_frames([1, 2], 0)


def test_denoising_strip_has_two_rows_per_sample_and_a_column_per_frame():
    b, n = 3, 4
    frames = [(t, solid(b, COLOUR), solid(b, OTHER)) for t in (30, 20, 10, 0)]
    image = figures.denoising_strip(frames, ["a", "b", "c"], pad=PAD)
    box_h, box_w = colour_box(image, COLOUR)  # x_t rows: 0, 2, 4
    assert box_w == n * (W + PAD) - PAD
    assert box_h == (2 * b - 2) * (H + PAD) + H
    assert colour_box(image, OTHER) == (box_h, box_w)  # x0 rows: 1, 3, 5
    labels = ["a x_t", "a x0", "b x_t", "b x0", "c x_t", "c x0"]
    headers = ["t=30", "t=20", "t=10", "t=0"]
    same_grid = figures.labelled_grid([solid(n)] * (2 * b), labels, pad=PAD, headers=headers)
    assert image.size == same_grid.size


def test_denoising_rejects_mismatched_labels_and_shapes():
    with pytest.raises(ValueError, match="1 labels for 2 samples"):
        figures.denoising_strip(frames_of(3), ["only one"])
    bad = [*frames_of(2), (0, torch.rand(2, 3, H, W), torch.rand(1, 3, H, W))]
    with pytest.raises(ValueError, match="same"):
        figures.denoising_strip(bad, ["a", "b"])
    with pytest.raises(ValueError, match="no frames"):
        figures.denoising_strip([], [])


def test_denoising_gif_has_one_frame_per_step_and_holds_the_last(tmp_path: Path):
    path = figures.denoising_gif(
        frames_of(5), ["a", "b"], tmp_path / "sub" / "d.gif", duration_ms=80, hold_ms=900
    )
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.info["loop"] == 0
        durations = []
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
    assert durations == [80, 80, 80, 80, 900]


def test_denoising_gif_thins_long_runs(tmp_path: Path):
    path = figures.denoising_gif(frames_of(9), ["a", "b"], tmp_path / "d.gif", max_frames=4)
    with Image.open(path) as gif:
        assert gif.n_frames == 4


# ----------------------------------------------------------------------------------- attention
def test_colormap_ends():
    colours = figures.colormap(torch.tensor([0.0, 1.0, 2.0]))  # (3, 3): values clamped
    assert torch.allclose(colours[:, 0], torch.tensor([0.0, 0.0, 0.5]))
    assert torch.allclose(colours[:, 1], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(colours[:, 2], colours[:, 1])


@pytest.mark.parametrize(
    ("query", "r", "token"),
    [((0.0, 0.0), 4, 0), ((1.0, 1.0), 4, 15), ((0.3, 0.6), 4, 6), ((0.49, 0.99), 2, 1)],
)
def test_query_token(query, r, token):
    assert figures.query_token(query, r) == token


def one_hot_weights(r: int, query_token: int, target: int, heads: int = 2) -> torch.Tensor:
    """(heads, r*r, r*r) uniform attention, except that head 0's `query_token` row puts all its
    mass on `target`."""
    weights = torch.full((heads, r * r, r * r), 1.0 / (r * r))
    weights[0, query_token] = 0.0
    weights[0, query_token, target] = 1.0
    return weights


def test_overlay_is_hottest_at_the_attended_tokens_location():
    r, size = 4, 16  # tokens cover 4 x 4 pixel blocks
    query = (0.1, 0.9)  # token (0, 3)
    target = 2 * r + 1  # token (2, 1): pixels 8..11 x 4..7
    weights = one_hot_weights(r, figures.query_token(query, r), target)
    (overlay,) = figures.attention_overlay(torch.zeros(3, size, size), weights, query, [0], 1.0)
    hot = overlay[0] - overlay[2]  # red minus blue: 1 at colormap(1), -0.5 at colormap(0)
    y, x = divmod(int(hot.argmax()), size)
    assert 8 <= y < 12 and 4 <= x < 8
    assert torch.allclose(overlay[:, y, x], figures.colormap(torch.tensor(1.0)))
    assert (overlay[:, 1, 14] == 1.0).all()  # the query's cross, at pixel (1, 14)

    (mean,) = figures.attention_overlay(torch.zeros(3, size, size), weights, query, None, 1.0)
    assert divmod(int((mean[0] - mean[2]).argmax()), size) == (y, x)


def test_overlay_shapes_heads_and_alpha():
    image = torch.rand(3, 16, 16)
    weights = one_hot_weights(8, 0, 5, heads=4)
    assert len(figures.attention_overlay(image, weights, (0.5, 0.5))) == 1
    overlays = figures.attention_overlay(image, weights, (0.5, 0.5), heads=[0, 2, 3])
    assert len(overlays) == 3 and all(o.shape == (3, 16, 16) for o in overlays)
    (plain,) = figures.attention_overlay(image, weights, (0.5, 0.5), alpha=0.0)
    changed = (plain != image).any(0)  # only the query's cross
    assert changed[8].sum() + changed[:, 8].sum() <= 2 * 5 and changed[8, 8]


@pytest.mark.parametrize(
    ("weights", "kwargs", "message"),
    [
        (torch.rand(2, 16, 16), {"query": (1.2, 0.5)}, "query must be"),
        (torch.rand(2, 16, 16), {"query": (0.5, -0.1)}, "query must be"),
        (torch.rand(2, 16, 8), {}, r"weights must be \(heads, HW, HW\)"),
        (torch.rand(1, 2, 16, 16), {}, "index the sample"),
        (torch.rand(2, 15, 15), {}, "not a square grid"),
        (torch.rand(2, 16, 16), {"heads": [0, 2]}, r"heads \[0, 2\] not in 0..1"),
        (torch.rand(2, 16, 16), {"heads": []}, "heads"),
        (torch.rand(2, 16, 16), {"alpha": 1.5}, "alpha"),
    ],
)
def test_overlay_rejects_bad_input(weights, kwargs, message):
    args = {"query": (0.5, 0.5), **kwargs}
    with pytest.raises(ValueError, match=message):
        figures.attention_overlay(torch.rand(3, 16, 16), weights, **args)


def test_attention_figure_has_a_row_per_layer_and_query():
    image = torch.rand(3, H, W)
    maps = {"down.1.attn.0": torch.rand(4, 16, 16).softmax(-1), "mid.attn": torch.rand(4, 4, 4)}
    queries = [(0.3, 0.5), (0.7, 0.5)]
    fig = figures.attention_figure(image, maps, list(maps), queries, heads=[1, 3], scale=2)
    labels = [f"{layer} q=({qy:.2f},{qx:.2f})" for layer in maps for qy, qx in queries]
    expected = figures.labelled_grid(
        [torch.zeros(3, 3, H, W)] * 4, labels, scale=2, headers=["image", "head 1", "head 3"]
    )
    assert fig.size == expected.size

    mean = figures.attention_figure(image, maps, ["mid.attn"], queries[:1], None)
    assert mean.height < fig.height and mean.width < fig.width
    with pytest.raises(ValueError, match=r"no maps for layers \['up.0.attn.0'\]"):
        figures.attention_figure(image, maps, ["up.0.attn.0"], queries, None)
