"""Evaluation metrics on controlled inputs: a tiny feature network, planted copies, known labels."""

import numpy as np
import pytest
import torch

from facediff.evaluation import metrics
from facediff.evaluation.classifier import FaceClassifier, predict
from facediff.evaluation.features import classifier_space, embed

CLASSES = ["glasses", "hat", "beard"]


@pytest.fixture(scope="module")
def faces(demo_faces) -> tuple[torch.Tensor, torch.Tensor]:
    """24 demo faces per class at 16x16, in [0, 1], with their labels."""
    return demo_faces(16, 24)


@pytest.fixture(scope="module")
def tiny_space():
    torch.manual_seed(0)
    return classifier_space(FaceClassifier(3, widths=(8, 16)).eval(), "tiny")


def test_fid_and_kid_of_a_set_against_itself_are_zero_and_against_noise_large(faces, tiny_space):
    images, _ = faces
    real = tiny_space(images)
    noise = tiny_space(torch.rand(len(images), 3, 16, 16))
    assert metrics.fid(real, real) == pytest.approx(0.0, abs=1e-6)
    # untrained features are small, so compare with two halves of the same set, not a constant
    assert metrics.fid(real, noise) > 50 * metrics.fid(real[::2], real[1::2]) > 0
    same, _ = metrics.kid(real[::2], real[1::2], subsets=20, subset_size=30)
    far, _ = metrics.kid(real, noise, subsets=20, subset_size=30)
    assert abs(same) < 0.05 * far


def test_fid_matches_an_independent_computation(faces, tiny_space):
    images, _ = faces
    a, b = tiny_space(images[:40]).double(), tiny_space(images[30:]).double()
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    # trace(sqrtm(A B)) from the eigenvalues of A B, not torchmetrics' route
    trace_root = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)).sum()
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b) - 2 * trace_root
    assert metrics.fid(a, b) == pytest.approx(expected, rel=1e-4)


def test_kid_matches_an_independent_unbiased_mmd():
    torch.manual_seed(0)
    x, y = torch.randn(30, 5).double(), torch.randn(30, 5).double() + 0.3
    k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731  (KID's cubic kernel)
    n = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd = (kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (n * (n - 1))
    mmd -= 2 * kxy.mean()
    mean, std = metrics.kid(x, y, subsets=3, subset_size=30)  # every subset is the whole set
    assert mean == pytest.approx(float(mmd), rel=1e-6) and std == pytest.approx(0.0, abs=1e-9)


def test_class_consistency_of_real_images_equals_the_classifiers_accuracy(faces, tiny_space):
    images, labels = faces
    torch.manual_seed(1)
    clf = FaceClassifier(3, widths=(8, 16)).eval()
    logits, features = predict(clf, images)
    result = metrics.group_metrics(
        fake_logits=logits, fake_features=features, fake_labels=labels,
        real_logits=logits, real_features=features, real_labels=labels,
        nn_distances=torch.zeros(len(labels)), class_names=CLASSES, threshold=0.0,
    )  # fmt: skip
    expected = (logits.argmax(1) == labels).float()
    assert result["real_accuracy"] == pytest.approx(float(expected.mean()))
    assert result["class_consistency"] == result["real_accuracy"]
    for c, name in enumerate(CLASSES):
        per = result["per_class"][name]
        assert per["class_consistency"] == pytest.approx(float(expected[labels == c].mean()))
        assert per["class_consistency"] == per["real_accuracy"]
        assert per["fid"] == pytest.approx(0.0, abs=1e-6)
        assert per["n_generated"] == per["n_real"] == 24
        hits = int(expected[labels == c].sum())  # the same set twice: an interval about 1
        interval = metrics.ratio_interval(hits, 24, hits, 24)  # None where no face is a hit
        assert per["consistency_ratio_ci95"] == (pytest.approx(interval) if interval else None)
        if interval:
            assert interval[0] <= 1.0 <= interval[1]


def test_memorisation_audit_finds_planted_copies(faces, tiny_space):
    images, _ = faces
    train, test = images[::2], images[1::2]  # 36 each
    fresh = images[1::2][:12]
    planted = torch.cat([train[[3, 17, 30]], fresh])  # 3 copies of training images, 12 others
    feats_train = tiny_space(train)
    held_out, _ = metrics.nearest(tiny_space(test), feats_train)
    threshold = metrics.memorisation_threshold(held_out, quantile=0.0)  # the nearest held-out face
    assert threshold == pytest.approx(float(held_out.min())) and threshold > 0
    dist, idx = metrics.nearest(tiny_space(planted), feats_train)
    assert idx[:3].tolist() == [3, 17, 30]
    assert dist[:3].max() < 1e-4
    assert metrics.memorised_share(dist, threshold) == pytest.approx(3 / 15)


def test_memorisation_profile_tells_copies_from_new_faces():
    gen = torch.Generator().manual_seed(0)
    held_out = torch.rand(2000, generator=gen) + 1.0  # real unseen faces' distances: U(1, 2)
    quantiles = (0.01, 0.05, 0.1)
    like_new = torch.rand(4000, generator=gen) + 1.0  # samples as far as new faces are
    for row in metrics.memorisation_profile(like_new, held_out, quantiles):
        assert row["share"] == pytest.approx(row["quantile"], abs=0.015)
    copies = torch.cat([torch.zeros(200), like_new[:3800]])  # 5% exact copies
    shares = [row["share"] for row in metrics.memorisation_profile(copies, held_out, quantiles)]
    assert shares[0] > 0.05 and shares[1] > 0.09  # the copies sit under every quantile
    assert metrics.memorisation_profile(copies, held_out, ()) == []
    with pytest.raises(ValueError, match="quantiles must be in"):
        metrics.memorisation_profile(copies, held_out, (0.0, 0.5))


def test_diversity_is_zero_for_copies_and_grows_with_spread():
    torch.manual_seed(0)
    base = torch.randn(1, 8)
    assert metrics.mean_pairwise_distance(base.repeat(5, 1)) == pytest.approx(0.0, abs=1e-6)
    narrow = metrics.mean_pairwise_distance(base + 0.1 * torch.randn(50, 8))
    wide = metrics.mean_pairwise_distance(base + torch.randn(50, 8))
    assert wide > 5 * narrow


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="FID needs >= 2"):
        metrics.fid(torch.randn(1, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="quantile"):
        metrics.memorisation_threshold(torch.rand(3), quantile=2.0)


def test_embed_in_the_classifier_space_matches_separate_passes(faces, tiny_space):
    images, _ = faces
    torch.manual_seed(2)
    clf = FaceClassifier(3, widths=(8, 16)).eval()
    space = classifier_space(clf, "k")
    logits, features = embed(clf, space, images)
    torch.testing.assert_close(logits, predict(clf, images)[0])
    torch.testing.assert_close(features, space(images))
    _, other = embed(clf, tiny_space, images)  # another space: its own features
    torch.testing.assert_close(other, tiny_space(images))


def test_floor_is_real_against_real_with_as_many_per_class_as_generated(faces, tiny_space):
    images, labels = faces
    feats = tiny_space(images)
    test, held_out = torch.arange(0, 72, 2), torch.arange(1, 72, 2)  # 12 per class each
    fake = tiny_space(torch.rand(30, 3, 16, 16))  # noise "samples", 10 per class
    fake_labels = torch.arange(3).repeat_interleave(10)
    logits = torch.zeros(len(fake_labels), 3)
    result = metrics.group_metrics(
        fake_logits=logits, fake_features=fake, fake_labels=fake_labels,
        real_logits=torch.zeros(36, 3), real_features=feats[test], real_labels=labels[test],
        nn_distances=torch.ones(30), class_names=CLASSES, threshold=0.0,
        floor_features=feats[held_out], floor_labels=labels[held_out],
    )  # fmt: skip
    keep = metrics.per_class_subset(labels[held_out], {0: 10, 1: 10, 2: 10})
    assert metrics.fid(feats[test], feats[held_out][keep]) == pytest.approx(result["fid_floor"])
    assert 0 < result["fid_floor"] < result["fid"] / 10
    assert result["fid_ratio"] == pytest.approx(result["fid"] / result["fid_floor"])
    assert result["diversity_ratio"] == pytest.approx(
        result["diversity"] / result["real_diversity"]
    )
    for c, name in enumerate(CLASSES):
        per = result["per_class"][name]
        expected = metrics.fid(feats[test][labels[test] == c], feats[held_out][keep][c * 10 :][:10])
        assert per["fid_floor"] == pytest.approx(expected)
        assert per["fid_ratio"] > 1


def test_wilson_interval_brackets_the_share_and_narrows_with_n():
    lo, hi = metrics.wilson_interval(5, 300)
    assert lo < 5 / 300 < hi and lo < 0.01 < hi  # 1.7% of 300 is consistent with 1%
    lo_big, hi_big = metrics.wilson_interval(50, 3000)
    assert hi_big - lo_big < (hi - lo) / 2 and hi_big < 0.025
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)
    assert metrics.wilson_interval(0, 100)[0] == 0.0


def test_ratio_interval_by_hand():
    # 255 of 300 samples and 80 of 100 real faces: ratio 1.0625; log-ratio standard error
    # sqrt(0.15 / 255 + 0.2 / 80) = 0.05557, so exp(log(1.0625) -+ 1.96 * 0.05557)
    lo, hi = metrics.ratio_interval(255, 300, 80, 100)
    assert (lo, hi) == pytest.approx((0.95285, 1.18477), abs=1e-4)
    lo_big, hi_big = metrics.ratio_interval(2550, 3000, 800, 1000)  # ten times the faces
    assert lo < lo_big < 1.0625 < hi_big < hi
    assert metrics.ratio_interval(0, 300, 80, 100) is None  # no hit: no log-ratio
    # no miss: Haldane's half counts, 30.5 / 31 over 30.5 / 31, log-ratio standard error
    # sqrt(2 * (0.5 / 31) / 30.5) = 0.03252, so exp(-+ 1.96 * 0.03252)
    assert metrics.ratio_interval(30, 30, 30, 30) == pytest.approx([0.9383, 1.0658], abs=1e-4)
    lo, hi = metrics.ratio_interval(300, 300, 80, 100)  # the real share's noise still counts
    assert lo < 1.25 < hi and hi - lo > 0.2


def test_memorisation_floor_counts_held_out_real_faces_under_the_threshold(faces, tiny_space):
    images, labels = faces
    feats = tiny_space(images)
    test, held_out = torch.arange(0, 72, 2), torch.arange(1, 72, 2)
    floor_nn = torch.linspace(0.0, 1.0, 36)  # held-out distances to the training set
    floor_under = floor_nn < 0.5  # e.g. under an absolute memorisation.threshold
    result = metrics.group_metrics(
        fake_logits=torch.zeros(36, 3), fake_features=feats[held_out], fake_labels=labels[held_out],
        real_logits=torch.zeros(36, 3), real_features=feats[test], real_labels=labels[test],
        nn_distances=floor_nn, class_names=CLASSES, threshold=0.5,
        floor_features=feats[held_out], floor_labels=labels[held_out],
        floor_memorised=floor_under, floor_memorised_labels=labels[held_out],
    )  # fmt: skip
    under = int(floor_under.sum())
    assert result["memorised_count"] == under
    assert result["memorised_share"] == pytest.approx(under / 36)
    assert result["memorised_share_floor"] == pytest.approx(under / 36)
    lo, hi = result["memorised_ci95"]
    assert lo < under / 36 < hi
    for c, name in enumerate(CLASSES):
        per = result["per_class"][name]
        expected = float(floor_under[labels[held_out] == c].double().mean())
        assert per["memorised_share_floor"] == pytest.approx(expected)


def test_memorisation_floor_scores_each_split_under_the_others_cut():
    test_nn = torch.tensor([0.1, 1.0, 2.0, 3.0])  # one test face far nearer than the rest
    val_nn = torch.tensor([0.5, 1.5, 2.5, 3.5])
    under = metrics.memorisation_floor(test_nn, val_nn, quantile=0.0)  # cuts at each split's min
    # test faces under the validation faces' nearest (0.5): the 0.1; validation faces under
    # the test faces' nearest (0.1): none. In-sample, each split's own minimum never counts.
    assert under.tolist() == [True, False, False, False, False, False, False, False]
    cut = metrics.memorisation_threshold(torch.cat([test_nn, val_nn]), 0.5)
    assert cut == pytest.approx(1.75)  # both splits' median
