"""The pixel-space copy test: planted copies are caught, fresh faces and look-alikes are not."""

import pytest
import torch

from facediff.evaluation import copies

CLASSES = ["glasses", "hat", "beard"]


@pytest.fixture(scope="module")
def faces(demo_faces) -> tuple[torch.Tensor, torch.Tensor]:
    """20 demo faces per class at 32x32, in [0, 1], with their labels."""
    return demo_faces(32, 20)


def test_pixel_vectors_shrink_large_images_and_keep_small_ones():
    big, small = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 16, 16)
    assert copies.pixel_vectors(big, size=32).shape == (2, 3 * 32 * 32)
    assert copies.pixel_vectors(small, size=32).shape == (2, 3 * 16 * 16)
    flat = torch.full((1, 3, 64, 64), 0.25)
    assert torch.allclose(copies.pixel_vectors(flat, 32), torch.full((1, 3072), 0.25))
    with pytest.raises(ValueError, match="N, C, H, W"):
        copies.pixel_vectors(torch.rand(3, 8, 8))


def test_planted_copies_are_caught_and_fresh_faces_are_not(faces):
    images, _ = faces
    train, held_out = images[::2], images[1::2]  # 30 each
    gen = torch.Generator().manual_seed(0)
    noisy = (train[[2, 11, 25]] + 0.02 * torch.randn(3, 3, 32, 32, generator=gen)).clamp(0, 1)
    queries = torch.cat([noisy, held_out])
    ratios, nearest, _ = copies.copy_ratios(
        copies.pixel_vectors(queries), copies.pixel_vectors(train)
    )
    assert nearest[:3].tolist() == [2, 11, 25]
    assert ratios[:3].max() < 1 / 3
    assert ratios[3:].min() > 1 / 3  # look-alikes of one cartoon style, not copies
    share = copies.copied(ratios, 1 / 3)
    assert share["copied_count"] == 3
    assert share["copied_share"] == pytest.approx(3 / 33)
    lo, hi = share["copied_ci95"]
    assert lo < 3 / 33 < hi


def test_a_mirrored_copy_is_caught_only_against_mirrored_references():
    train = torch.rand(30, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # asymmetric
    vectors, mirrored = copies.pixel_vectors(train), copies.pixel_vectors(train.flip(-1))
    query = copies.pixel_vectors(train[[7]].flip(-1))  # training flips images: this is a copy
    plain, _, _ = copies.copy_ratios(query, vectors)
    both, nearest, flipped = copies.copy_ratios(query, vectors, mirrored)
    assert float(plain[0]) > 1 / 3
    assert float(both[0]) == pytest.approx(0.0) and int(nearest[0]) == 7 and bool(flipped[0])
    _, _, unflipped = copies.copy_ratios(vectors[[7]], vectors, mirrored)
    assert not bool(unflipped[0])
    with pytest.raises(ValueError, match="mirrored"):
        copies.copy_ratios(query, vectors, mirrored[:3])


def test_an_exact_copy_has_ratio_zero_and_needs_two_references():
    refs = torch.rand(5, 12)
    ratios, nearest, _ = copies.copy_ratios(refs[[4]], refs)
    assert float(ratios[0]) == pytest.approx(0.0) and int(nearest[0]) == 4
    with pytest.raises(ValueError, match=">= 2 training images"):
        copies.copy_ratios(refs[:1], refs[:1])


def test_copy_metrics_count_per_class_and_on_the_floor():
    ratios = torch.tensor([0.1, 0.9, 0.8, 0.2, 0.25, 0.7])
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    floor_ratios, floor_labels = torch.tensor([0.9, 0.1, 0.8, 0.95]), torch.tensor([0, 1, 1, 2])
    out = copies.copy_metrics(ratios, labels, CLASSES, 1 / 3, floor_ratios, floor_labels)
    assert out["copied_count"] == 3 and out["copied_share"] == pytest.approx(0.5)
    assert out["copied_share_floor"] == pytest.approx(0.25)
    assert out["copy_max_ratio"] == pytest.approx(1 / 3)
    assert out["copy_ratio_min"] == pytest.approx(0.1)
    per = out["per_class"]
    assert [per[c]["copied_count"] for c in CLASSES] == [1, 2, 0]
    assert [per[c]["copied_share_floor"] for c in CLASSES] == pytest.approx([0.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="together"):
        copies.copy_metrics(ratios, labels, CLASSES, 1 / 3, floor_ratios=floor_ratios)
