"""Recompute an evaluation's headline numbers independently, from its samples.pt, with NumPy.

    python benchmarks/check_evaluation.py eval/demo

Class consistency and real accuracy from the saved logits (argmax), FID from the saved features
(Frechet distance, with the matrix square root's trace from eigenvalues instead of torchmetrics'
route), the memorised share from the saved nearest-neighbour distances, the memorisation profile
from the real held-out faces' distances (np.quantile) and the copied share from the saved
pixel-space copy ratios; each is printed next to metrics.json's value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # trace(sqrtm(A B)) = sum of sqrt of the eigenvalues of A B (real, >= 0 for PSD A, B)
    eig = np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)
    return float(
        ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(eig).sum()
    )


def main(out: Path) -> None:
    saved = json.loads((out / "metrics.json").read_text())
    s = {
        k: v.double().numpy() for k, v in torch.load(out / "samples.pt", weights_only=True).items()
    }
    ours = {
        "class_consistency": float((s["logits"].argmax(1) == s["labels"]).mean()),
        "real_accuracy": float((s["real_logits"].argmax(1) == s["real_labels"]).mean()),
        "fid": frechet(s["real_features"], s["features"]),
        "memorised_share": float((s["nn_distances"] < saved["memorisation_threshold"]).mean()),
    }
    if "copy_ratios" in s:  # evaluations since the copy test
        ours["copied_share"] = float((s["copy_ratios"] < saved["copy_max_ratio"]).mean())
    for key, value in ours.items():
        print(f"{key:18s} metrics.json {saved[key]:.6f}   recomputed {value:.6f}")
    if "held_out_nn_distances" in s:  # evaluations since the profile: its shares
        for row in saved.get("memorised_profile", []):
            cut = np.quantile(s["held_out_nn_distances"], row["quantile"])
            value = float((s["nn_distances"] < cut).mean())
            name = f"profile_{row['quantile']:g}"
            print(f"{name:18s} metrics.json {row['share']:.6f}   recomputed {value:.6f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
