"""evaluate.py on a tiny trained checkpoint: the report, the classifier cache, bad input, and the
training-time metric callback."""

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from facediff.evaluation.classifier import FaceClassifier, load_classifier, save_classifier
from facediff.jobs.evaluate import run
from facediff.lightning.training import run as train

ROOT = Path(__file__).parents[1]
CLASSES = ["glasses", "hat", "beard"]
FAST = (
    "n_per_class=4",
    "steps=3",
    "batch_size=12",
    "device=cpu",
    "classifier.epochs=2",
    "classifier.widths=[8,16]",
    "kid.subsets=5",
    "memorisation.n_pairs=4",
)


def eval_cfg(ckpt, out, cache, *overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[f"ckpt={ckpt}", f"out={out}", f"paths.cache_dir={cache}", *FAST, *overrides],
        )


@pytest.fixture(scope="module")
def evaluated(tiny_checkpoint, demo_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    sweep = ("sweep.n_per_class=3", "sweep.samplers=[{sampler: ddim, steps: 2}]",
             "sweep.guidance=[1.0, 2.0]")  # fmt: skip
    result = run(eval_cfg(tiny_checkpoint, out, demo_cache, *sweep))
    return out, result


def test_metrics_json_holds_every_documented_key(evaluated):
    out, result = evaluated
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("class_consistency", "real_accuracy", "fid", "kid_mean", "kid_std",
                "feature_extractor", "diversity", "memorised_share", "copied_share",
                "copied_share_floor", "copy_max_ratio", "sharpness",
                "sharpness_floor"):  # fmt: skip
        assert key in saved
    assert saved["feature_extractor"].startswith("facediff-classifier:")
    assert set(saved["per_class"]) == set(CLASSES)
    for per in saved["per_class"].values():
        assert {"class_consistency", "real_accuracy", "fid", "kid_mean", "kid_std",
                "copied_share", "copied_share_floor", "sharpness",
                "sharpness_floor"} <= set(per)  # fmt: skip
        assert per["n_generated"] == 4
        assert 0 <= per["copied_share"] <= 1
        assert per["sharpness"] > 0 and per["sharpness_floor"] > 0
    assert saved["n_generated"] == 12 and 0 <= saved["class_consistency"] <= 1
    profile = saved["memorised_profile"]  # conf/evaluate.yaml's quantiles, in order
    assert [row["quantile"] for row in profile] == [0.01, 0.02, 0.05, 0.1]
    assert all(0 <= row["share"] <= 1 for row in profile)
    assert [row["share"] for row in profile] == sorted(row["share"] for row in profile)
    for row in (saved, *saved["per_class"].values()):  # the ratio's interval, where defined
        if row["consistency_ratio_ci95"] is not None:
            lo, hi = row["consistency_ratio_ci95"]
            assert lo <= row["consistency_ratio"] <= hi


def test_real_accuracy_is_the_cached_classifiers_test_accuracy(evaluated):
    _, result = evaluated
    assert result["real_accuracy"] == pytest.approx(result["classifier"]["test_accuracy"])


def test_report_and_figures_are_written(evaluated):
    out, result = evaluated
    for name in ("report.md", "samples.png", "per_class.png", "closest_pairs.png",
                 "sweep_guidance.png", "sweep_steps.png"):  # fmt: skip
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "not Inception-v3" in report and "## Per group" in report and "## Sweeps" in report
    assert result["data"] == "demo"  # the model card's caveats are the demo's, not UTKFace's
    assert "drawn by a program" in report and "UTKFace" not in report
    ran = result["sampling"]["precision"]  # what "auto" meant here, never "auto" itself
    assert ran in ("fp32", "bf16") and f"the network in {ran};" in report
    assert [(p["sampler"], p["steps"], p["guidance"]) for p in result["sweep"]] == [
        ("ddim", 2, 1.0), ("dpmpp", 3, 1.0), ("dpmpp", 3, 2.0)
    ]  # fmt: skip


def test_train_classifier_task_reuses_the_cache(
    tiny_checkpoint, demo_cache, tmp_path, evaluated, monkeypatch
):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr("facediff.evaluation.classifier.train_classifier", no_training)
    meta = run(eval_cfg(tiny_checkpoint, tmp_path, demo_cache, "task=train_classifier"))
    assert meta == evaluated[1]["classifier"]  # loaded from the cache, not retrained
    assert json.loads((tmp_path / "classifier.json").read_text())["key"] == meta["key"]


def test_an_absolute_memorisation_threshold_puts_every_held_out_face_out_of_sample(
    tiny_checkpoint, demo_cache, tmp_path, evaluated
):
    """`memorisation.threshold` given: the cut is that distance and the floor is the share of
    every held-out face under it (no cross-fitting: none of them set the cut)."""
    everything = run(eval_cfg(tiny_checkpoint, tmp_path, demo_cache, "memorisation.threshold=1e9"))
    assert everything["memorisation_threshold"] == 1e9
    assert everything["memorised_share"] == 1.0 and everything["memorised_share_floor"] == 1.0
    for per in everything["per_class"].values():
        assert per["memorised_share"] == 1.0 and per["memorised_share_floor"] == 1.0
    # the samples and the profile do not depend on the cut
    assert everything["memorised_profile"] == evaluated[1]["memorised_profile"]


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (["task=score"], ValueError, "Unknown task"),
        (["steps=0"], ValueError, "steps=0: must be an integer >= 1"),
        (["steps=9999"], ValueError, "steps must be in 1..500"),
        (["guidance=-1"], ValueError, "guidance=-1: must be a finite number >= 0"),
        (["sweep.samplers=[{sampler: euler, steps: 5}]"], ValueError, "sweep.samplers=.*euler"),
        (["sweep.guidance=[1.0, -2.0]"], ValueError, "sweep.guidance=.*numbers >= 0"),
        (["n_per_class=1"], ValueError, "n_per_class=1: must be an integer >= 2"),
        (["features.inception_weights=/nowhere/w.pth"], FileNotFoundError, "weights-inception"),
    ],
)
def test_bad_input_is_named(tiny_checkpoint, demo_cache, tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        run(eval_cfg(tiny_checkpoint, tmp_path, demo_cache, *overrides))


def test_classifier_files_round_trip_and_foreign_files_are_refused(tmp_path):
    clf = FaceClassifier(3, widths=(8, 16))
    save_classifier(tmp_path / "c.pt", clf, {"class_names": CLASSES})
    loaded, meta = load_classifier(tmp_path / "c.pt")
    assert meta == {"class_names": CLASSES}
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), clf.eval()(x))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a facediff evaluation classifier"):
        load_classifier(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="task=train_classifier"):
        load_classifier(tmp_path / "missing.pt")


def test_eval_metrics_callback_logs_a_monitorable_metric(tiny_cfg):
    cfg = tiny_cfg(
        "logger=csv",
        "trainer.max_epochs=2",
        "+callbacks.eval_metrics={_target_: facediff.lightning.eval_callback.EvalMetrics, "
        "cache_dir: ${paths.cache_dir}, every_n_epochs: 1, n_per_class: 3, "
        "sampling: {sampler: dpmpp, steps: 2, guidance: 3.0, eta: 0.0, seed: 0, "
        "spacing: trailing, precision: fp32}, "
        "kid_subset_size: 5, classifier: {epochs: 1, lr: 1.0e-3, widths: [8, 16], seed: 0}}",
        "callbacks.model_checkpoint.monitor=eval/class_consistency",
        "callbacks.model_checkpoint.mode=max",
        "optimized_metric=eval/class_consistency",
    )
    value = train(cfg)
    assert value is not None and 0 <= value <= 1
    rows = list(csv.DictReader(next(Path(cfg.paths.output_dir).rglob("metrics.csv")).open()))
    logged = [float(r["eval/class_consistency"]) for r in rows if r.get("eval/class_consistency")]
    kid = [r["eval/kid"] for r in rows if r.get("eval/kid")]
    assert len(logged) == 2 and len(kid) == 2
    assert list((Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))


def test_logger_wandb_gets_the_numbers_and_figures(
    tiny_checkpoint, demo_cache, tmp_path, monkeypatch
):
    from test_training import wandb_history_keys

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(
        eval_cfg(
            tiny_checkpoint, tmp_path, demo_cache, "logger=wandb", f"paths.output_dir={tmp_path}"
        )
    )
    run_dir = next(tmp_path.glob("wandb/offline-run-*"))
    want = {"eval/class_consistency", "eval/fid", "eval/hat/class_consistency"}
    keys = wandb_history_keys(next(run_dir.glob("*.wandb")), want)
    logs = "".join(f.read_text()[-3000:] for f in run_dir.glob("logs/debug*.log"))
    assert want <= keys, (keys, logs)  # W&B's own logs say why, should it fail
    assert list(run_dir.rglob("media/images/eval/per_class_*.png"))


def test_check_evaluation_recomputes_the_headline_numbers(evaluated, capsys):
    from benchmarks import check_evaluation

    out, result = evaluated
    check_evaluation.main(out)
    printed = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    for key in ("class_consistency", "real_accuracy", "memorised_share", "copied_share"):
        _, _, saved, _, recomputed = printed[key]
        assert float(saved) == pytest.approx(result[key], abs=1e-6)
        assert float(recomputed) == pytest.approx(result[key], abs=1e-6)
    for row in result["memorised_profile"]:  # from samples.pt's held-out distances, with NumPy
        _, _, saved, _, recomputed = printed[f"profile_{row['quantile']:g}"]
        assert float(saved) == float(recomputed) == pytest.approx(row["share"], abs=1e-6)


@pytest.mark.parametrize("rank", [0, 1])
def test_eval_metrics_takes_rank_zeros_choice_of_auto_precision(rank, monkeypatch):
    """Under DDP every rank samples the same images: "auto" (a timed probe on a CPU, which may
    differ between ranks) is decided on rank 0 and broadcast; the other ranks never probe."""
    from types import SimpleNamespace

    import facediff.lightning.eval_callback as eval_callback
    from facediff.diffusion.objective import build_diffusion
    from facediff.diffusion.settings import SamplingSettings

    asked = []
    monkeypatch.setattr(
        eval_callback, "sampling_precision", lambda p, d: asked.append((p, d)) or "bf16"
    )
    sent = []
    strategy = SimpleNamespace(broadcast=lambda obj, src: sent.append(obj) or "bf16")
    trainer = SimpleNamespace(is_global_zero=rank == 0, strategy=strategy)
    schedule, objective = build_diffusion({"num_steps": 50, "prediction": "v"})
    module = SimpleNamespace(device=torch.device("cpu"), schedule=schedule, objective=objective)
    cb = eval_callback.EvalMetrics(
        "unused",
        SamplingSettings.defaults().replace(precision="auto", steps=5),
        classifier={},
        every_n_epochs=1,
        n_per_class=2,
        kid_subset_size=2,
    )
    cb.clf = object()  # the classifier is ready: setup stops after choosing the precision
    cb.setup(trainer, module, "fit")
    assert cb.sampling.precision == "bf16"
    assert asked == ([("auto", module.device)] if rank == 0 else [])
    assert sent == (["bf16"] if rank == 0 else [None])
