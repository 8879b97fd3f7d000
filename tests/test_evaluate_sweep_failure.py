"""evaluate.py writes its main result before the sweep: a failing sweep point loses nothing."""

import json

import pytest
from test_evaluate import eval_cfg

from facediff.jobs import scoring
from facediff.jobs.evaluate import run


def test_a_failing_sweep_keeps_the_main_result_and_the_points_before_it(
    tiny_checkpoint, demo_cache, tmp_path, monkeypatch
):
    original = scoring.Scorer.headline
    calls = []

    def headline(self, n_per_class, settings):
        calls.append(settings)
        if len(calls) == 2:
            raise RuntimeError("sampler blew up")
        return original(self, n_per_class, settings)

    monkeypatch.setattr(scoring.Scorer, "headline", headline)
    sweep = ("sweep.n_per_class=2", "sweep.samplers=[{sampler: ddim, steps: 2}]",
             "sweep.guidance=[1.0, 2.0]")  # fmt: skip
    with pytest.raises(RuntimeError, match="sampler blew up"):
        run(eval_cfg(tiny_checkpoint, tmp_path, demo_cache, *sweep))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= saved["class_consistency"] <= 1 and set(saved["per_class"]) == {
        "glasses", "hat", "beard"
    }  # fmt: skip
    assert [(p["sampler"], p["steps"]) for p in saved["sweep"]] == [("ddim", 2)]
    assert saved["sweep_error"]["point"]["guidance"] == 1.0
    assert "sampler blew up" in saved["sweep_error"]["error"]
    for name in ("report.md", "samples.png", "per_class.png", "samples.pt"):
        assert (tmp_path / name).is_file(), name
    assert "## Sweeps" in (tmp_path / "report.md").read_text()
