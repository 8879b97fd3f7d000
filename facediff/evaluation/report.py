"""Writing an evaluation: metrics.json, report.md, plots (matplotlib) and image grids."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from facediff.evaluation.metrics import wilson_interval
from facediff.tensor_figures import labelled_grid

PER_CLASS_COLUMNS = (
    ("class_consistency", "consistency"),
    ("real_accuracy", "real acc."),
    ("consistency_ratio", "ratio"),
    ("consistency_ratio_ci95", "ratio, 95% interval"),
    ("fid", "FID"),
    ("fid_floor", "FID floor"),
    ("kid_mean", "KID"),
    ("kid_mean_floor", "KID floor"),
    ("diversity", "diversity"),
    ("real_diversity", "real div."),
    ("memorised_share", "memorised"),
    ("memorised_share_floor", "memorised floor"),
    ("copied_share", "copies"),
    ("copied_share_floor", "copies floor"),
    ("sharpness", "sharpness"),
    ("sharpness_floor", "sharpness floor"),
    ("n_generated", "n gen."),
    ("n_real", "n real"),
)
SWEEP_COLUMNS = ("sampler", "steps", "guidance", "n_per_class", "class_consistency",
                 "consistency_ratio", "fid", "fid_ratio", "kid_mean", "sharpness",
                 "seconds_per_image")  # fmt: skip


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (list, tuple)) and len(value) == 2:  # an interval
        return f"{fmt(value[0])} to {fmt(value[1])}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def profile_text(profile: Sequence[dict[str, float]] | None) -> str:
    """`1% -> 1.1%, 5% -> 5.6%`: each held-out quantile and the samples' share under it."""
    if not profile:
        return "n/a"
    return ", ".join(f"{row['quantile'] * 100:g}% -> {row['share']:.1%}" for row in profile)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def closest_pairs(
    images: Tensor, distances: Tensor, nearest_image: Callable[[int], Tensor], n: int
) -> list[tuple[Tensor, Tensor, float]]:
    """The `n` samples with the smallest `distances` (or copy ratios) to a training image:
    (sample, `nearest_image(its position)`, the value)."""
    order = distances.argsort()[:n].tolist()
    return [(images[i], nearest_image(i), float(distances[i])) for i in order]


def per_class_plot(result: dict, path: Path) -> None:
    """Bars: class consistency of samples against the classifier's accuracy on real images."""
    names = list(result["per_class"])
    rows = [result["per_class"][n] for n in names]
    fake = [r["class_consistency"] for r in rows]
    real = [r["real_accuracy"] for r in rows]

    def errors(shares: list[float], key: str) -> list[list[float]]:
        """Each share's 95% Wilson interval as (below, above) bar lengths."""
        below, above = [], []
        for p, r in zip(shares, rows, strict=True):
            lo, hi = wilson_interval(round(p * r[key]), r[key]) if r[key] else (p, p)
            below.append(p - lo)
            above.append(hi - p)
        return [below, above]

    x = range(len(names))
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.4))
    bars = {"capsize": 3, "error_kw": {"lw": 0.8}}
    ax.bar([i - 0.2 for i in x], real, 0.4, yerr=errors(real, "n_real"), **bars,
           label="real test images")  # fmt: skip
    ax.bar([i + 0.2 for i in x], fake, 0.4, yerr=errors(fake, "n_generated"), **bars,
           label="generated (bars: 95% intervals)")  # fmt: skip
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recognised as their class")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep_plot(rows: Sequence[dict], x_key: str, path: Path, title: str) -> None:
    """Class consistency and FID against `x_key` (steps or guidance), one line per sampler."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for sampler in sorted({r["sampler"] for r in rows}):
        pts = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r[x_key])
        for ax, key in zip(axes, ("class_consistency", "fid"), strict=True):
            ax.plot([p[x_key] for p in pts], [p[key] for p in pts], "o-", label=sampler)
    for ax, key in zip(axes, ("class consistency", "FID"), strict=True):
        ax.set_xlabel(x_key)
        ax.set_ylabel(key)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep_points(result: dict) -> tuple[dict, list[dict]]:
    """The main setting's row and the points of the sweep's curves and table. FID depends on
    the sample size, so the main setting joins them only where the sweep drew as many per
    class (evaluate.py then does not draw it again)."""
    n_main = result["n_generated"] // len(result["per_class"])
    main = {**result["sampling"], **{k: result[k] for k in SWEEP_COLUMNS if k in result}}
    main["n_per_class"] = n_main
    sweep = result.get("sweep") or []
    same_size = all(r.get("n_per_class") == n_main for r in sweep)
    return main, ([main, *sweep] if same_size and sweep else list(sweep))


def write_report(
    out: Path,
    result: dict,
    class_names: Sequence[str],
    images: Tensor,
    labels: Tensor,
    pairs: Sequence[tuple[Tensor, Tensor, float]],
) -> dict[str, Path]:
    """Write metrics.json, the figures and report.md into `out`; returns the figures by name."""
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    scale = max(1, 64 // images.shape[-1])
    figures = {"samples": out / "samples.png", "per_class": out / "per_class.png"}
    rows = [images[labels == c][:16] for c in range(len(class_names))]
    labelled_grid(rows, class_names, scale=scale).save(figures["samples"])
    per_class_plot(result, figures["per_class"])
    if pairs:
        figures["closest_pairs"] = out / "closest_pairs.png"
        samples, nearest = (torch.stack([p[k] for p in pairs]) for k in (0, 1))
        grid = labelled_grid([samples, nearest], ["sample", "nearest train"], scale=scale)
        grid.save(figures["closest_pairs"])
    main, points = sweep_points(result)
    n = points[0]["n_per_class"] if points else main["n_per_class"]
    by_steps = [r for r in points if r["guidance"] == main["guidance"]]
    if len(by_steps) > 1:
        figures["sweep_steps"] = out / "sweep_steps.png"
        title = f"quality against step count ({n} per class)"
        sweep_plot(by_steps, "steps", figures["sweep_steps"], title)
    by_guidance = [
        r for r in points if (r["sampler"], r["steps"]) == (main["sampler"], main["steps"])
    ]
    if len(by_guidance) > 1:
        figures["sweep_guidance"] = out / "sweep_guidance.png"
        title = f"quality against guidance ({n} per class)"
        sweep_plot(by_guidance, "guidance", figures["sweep_guidance"], title)
    (out / "report.md").write_text(markdown(result, figures, pairs))
    return figures


def markdown(result: dict, figures: dict[str, Path], pairs: Sequence[tuple]) -> str:
    s, extractor = result["sampling"], result["feature_extractor"]
    warning = (
        ""
        if extractor.startswith("inception")
        else (
            f"\n> FID and KID here use **{extractor}** features (facediff's own evaluation "
            "classifier), not Inception-v3: compare them only with numbers of the same "
            "extractor, never with published FIDs.\n"
        )
    )
    overall = [
        ("class consistency (generated)", result["class_consistency"]),
        ("classifier accuracy (real test)", result["real_accuracy"]),
        ("consistency ratio (headline)", result["consistency_ratio"]),
        ("consistency ratio, 95% interval", result.get("consistency_ratio_ci95")),
        (f"FID ({extractor})", result["fid"]),
        ("FID floor (real vs real, same size)", result.get("fid_floor")),
        ("FID / floor", result.get("fid_ratio")),
        ("KID mean / std", f"{fmt(result['kid_mean'])} / {fmt(result['kid_std'])}"),
        ("KID floor (real vs real)", result.get("kid_mean_floor")),
        (
            "diversity (generated / real)",
            f"{fmt(result['diversity'])} / {fmt(result['real_diversity'])}",
        ),
        ("diversity ratio (generated / real)", result.get("diversity_ratio")),
        (
            "memorised share (count, 95% interval)",
            f"{fmt(result['memorised_share'])} ({result.get('memorised_count', 'n/a')}, "
            + " to ".join(fmt(v) for v in result.get("memorised_ci95", [None, None]))
            + ")",
        ),
        (
            "memorised share of real held-out faces, each split under the other's cut (floor)",
            result.get("memorised_share_floor"),
        ),
        ("memorisation threshold", result["memorisation_threshold"]),
        (
            "memorisation profile: share of samples under real held-out faces' distance quantiles",
            profile_text(result.get("memorised_profile")),
        ),
        (
            f"copies: pixel-space ratio < {fmt(result.get('copy_max_ratio'))} "
            "(share, count, 95% interval)",
            f"{fmt(result.get('copied_share'))} ({result.get('copied_count', 'n/a')}, "
            + " to ".join(fmt(v) for v in result.get("copied_ci95", [None, None]))
            + ")",
        ),
        ("copies among real held-out faces (floor)", result.get("copied_share_floor")),
        ("smallest copy ratio of a sample", result.get("copy_ratio_min")),
        ("sharpness (high-frequency power, generated / real)", result.get("sharpness")),
        ("sharpness floor (real held-out / real test)", result.get("sharpness_floor")),
        ("seconds per image", result["seconds_per_image"]),
    ]
    per_class = [
        [name, *(row.get(key) for key, _ in PER_CLASS_COLUMNS)]
        for name, row in result["per_class"].items()
    ]
    parts = [
        "# facediff evaluation\n",
        f"Checkpoint `{result['checkpoint']['path']}` (step {result['checkpoint']['global_step']})"
        f"; {result['n_generated']} samples with `{s['sampler']}`, {s['steps']} steps, guidance "
        f"{s['guidance']}, eta {s['eta']}, seed {s['seed']}, the network in {s['precision']}; "
        f"compared with {result['n_real']} real test images. "
        f"Classifier `{result['classifier']['key']}`.\n{warning}",
        "## Overall\n",
        markdown_table(["metric", "value"], overall),
        "\n## Per group\n",
        "Consistency: share of samples the classifier assigns to the group they were asked for; "
        "ratio: consistency over the classifier's accuracy on real images of that group (1 = "
        "generated faces are recognised as often as real ones; its 95% interval counts both "
        "shares' sampling noise, the real one from ~100 test faces the larger). FID floor: FID "
        "between two disjoint sets of real faces of the group (test and validation split, as many "
        "as were generated): what a perfect generator would score. KID is an unbiased "
        "estimate, so near 0 (a floor) it can come out slightly negative. Diversity: mean pairwise "
        "feature distance. Memorised: share of samples nearer to a training image than the "
        "threshold (a low quantile of real held-out images' distances to the training set, test "
        "and validation faces); memorised floor: the same share for those real faces, which the "
        "model never trained on, each split under the cut of the other split alone (what new faces "
        "score under a cut estimated from this many faces; the profile above compares the whole "
        "distributions). Copies: share of samples whose nearest training image, pixel by pixel, is "
        "under the ratio above times as far as the second nearest (a copy of one image, not a "
        "look-alike); copies floor: the same for real validation faces (the data's own "
        "near-duplicates). Sharpness: the samples' power at high spatial frequencies (half Nyquist "
        "and up) over the real test faces' (1 = as much fine detail, below = blurred, above = "
        "noise or artefacts); sharpness floor: the same for real validation faces.\n",
        markdown_table(["group", *(h for _, h in PER_CLASS_COLUMNS)], per_class),
        "\n![per group](per_class.png)\n\n![samples](samples.png)\n",
    ]
    if pairs:
        parts.append(
            "## Memorisation audit\n\nThe samples nearest to being copies (top row) and their "
            "nearest training image in pixel space (bottom row), by the copy ratio (nearest / "
            f"second-nearest distance; under {fmt(result.get('copy_max_ratio'))} is a copy): "
            f"{', '.join(f'{p[2]:.3f}' for p in pairs)}.\n\n"
            "![closest pairs](closest_pairs.png)\n"
        )
    if result.get("sweep"):
        main, points = sweep_points(result)
        rows = [
            [f"{r[k]} (main)" if r is main and k == "sampler" else r.get(k) for k in SWEEP_COLUMNS]
            for r in points
        ]
        parts += ["## Sweeps\n", markdown_table(list(SWEEP_COLUMNS), rows), ""]
        parts += [f"![{k}]({figures[k].name})\n" for k in ("sweep_steps", "sweep_guidance")
                  if k in figures]  # fmt: skip
    parts.append(model_card_section(result))
    return "\n".join(parts) + "\n"


# What the report says of a data set's labels (metrics.json's "data": utkface, folder or demo).
LABEL_CAVEATS = {
    "utkface": "UTKFace's group labels were estimated by an algorithm and checked by people, "
    "and the groups are coarse (and imbalanced in the full release). ",
    "demo": "The demo's classes are drawn by a program (glasses, hat, beard): a check of the "
    "pipeline, not of any population. ",
}


def model_card_section(result: dict) -> str:
    """This run's numbers in the shape of MODEL_CARD.md's evaluation section. Groups are ranked
    by their consistency ratio (the classifier recognises some groups better in real faces too,
    so raw consistency would rank the classifier, not the model)."""

    def ratio(kv: tuple[str, dict]) -> float:
        return kv[1]["consistency_ratio"]

    rows = [kv for kv in result["per_class"].items() if kv[1].get("consistency_ratio") is not None]
    if not rows:
        return "\n## Model card: this run\n\nNo group has a consistency ratio to rank.\n"
    low, high = min(rows, key=ratio), max(rows, key=ratio)
    return (
        "\n## Model card: this run\n\n"
        "See MODEL_CARD.md for intended use, the data's limits and the uses to avoid. For this "
        f"checkpoint the group recognised least often, relative to real faces of it, is "
        f"**{low[0]}** (consistency ratio {fmt(ratio(low))}), the most often **{high[0]}** "
        f"({fmt(ratio(high))}; above 1 the samples exaggerate the group); a gap between groups "
        "means the model serves them unequally, where it exceeds the ratios' 95% intervals "
        f"(above). {LABEL_CAVEATS.get(result.get('data'), '')}"
        "The classifier that judges consistency learned the training data's labels: it "
        "measures agreement with them, not truth.\n"
    )
