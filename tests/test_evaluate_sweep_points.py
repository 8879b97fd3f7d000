"""evaluate.py's sweep: each setting drawn once, and curves that join points of one sample size."""

import json

from test_evaluate import eval_cfg

from facediff.evaluation.report import sweep_points
from facediff.jobs import scoring
from facediff.jobs.evaluate import run


def row(sampler, steps, guidance, n, fid):
    return {"sampler": sampler, "steps": steps, "guidance": guidance, "n_per_class": n, "fid": fid}


def result_with(sweep, n_main=4):
    return {
        "sampling": {"sampler": "dpmpp", "steps": 3, "guidance": 1.0},
        "fid": 5.0,
        "n_generated": 3 * n_main,
        "per_class": {"a": {}, "b": {}, "c": {}},
        "sweep": sweep,
    }


def test_the_main_setting_joins_the_curves_only_at_the_sweeps_sample_size():
    same = result_with([row("dpmpp", 3, 2.0, 4, 7.0)])
    main, points = sweep_points(same)
    assert main["n_per_class"] == 4 and points == [main, same["sweep"][0]]
    other = result_with([row("dpmpp", 3, 1.0, 2, 9.0), row("dpmpp", 3, 2.0, 2, 8.0)])
    main, points = sweep_points(other)
    assert points == other["sweep"]  # FID at 4 per class is not a point of a 2-per-class curve


def test_a_sweep_point_equal_to_the_main_setting_is_not_drawn_again(
    tiny_checkpoint, demo_cache, tmp_path, monkeypatch
):
    drawn = []
    original = scoring.Scorer.headline

    def headline(self, n_per_class, settings):
        drawn.append((settings.sampler, settings.steps, settings.guidance))
        return original(self, n_per_class, settings)

    monkeypatch.setattr(scoring.Scorer, "headline", headline)
    # the main run draws dpmpp, 3 steps, guidance 1.0 (FAST); so does the sweep's first point
    sweep = ("sweep.n_per_class=4", "sweep.samplers=[{sampler: dpmpp, steps: 3}]",
             "sweep.guidance=[1.0, 2.0, 2.0]")  # fmt: skip
    result = run(eval_cfg(tiny_checkpoint, tmp_path, demo_cache, *sweep))
    assert drawn == [("dpmpp", 3, 2.0)]
    assert [r["n_per_class"] for r in result["sweep"]] == [4]
    report = (tmp_path / "report.md").read_text()
    assert "dpmpp (main)" in report and (tmp_path / "sweep_guidance.png").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["sweep"] == result["sweep"]
