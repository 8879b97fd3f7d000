"""A checkpoint is data: crafted files never import or call anything they name, and names that
become paths never leave the output folder or overwrite another output."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import hydra._internal.instantiate._instantiate2 as hydra_instantiate
import hydra._internal.utils as hydra_utils
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from facediff.checkpoint import CheckpointError, check_resumable
from facediff.data.build import build_datamodule
from facediff.inference.generator import Generator
from facediff.jobs.evaluate import run as evaluate
from facediff.jobs.sample import run as sample
from facediff.lightning.module import DiffusionModule
from facediff.models.registry import build_model
from facediff.untrusted import UnsafeValueError, check_name, inside

ROOT = Path(__file__).parents[1]


def payloads(victim: Path, source: Path) -> dict[str, dict[str, Any]]:
    """Hydra configs that each write `victim` when instantiated."""
    return {
        "exec": {"_target_": "builtins.exec", "_args_": [f"open({str(victim)!r}, 'w').write('x')"]},
        "os.system": {"_target_": "os.system", "_args_": [f"touch '{victim}'"]},
        "copyfile": {"_target_": "shutil.copyfile", "src": str(source), "dst": str(victim)},
    }


@pytest.fixture
def no_import_by_name(monkeypatch):
    """Fail the test if anything resolves a dotted name the way Hydra's instantiate does."""
    calls: list[str] = []

    def spy(path: str) -> Any:
        calls.append(path)
        raise AssertionError(f"something tried to import {path!r} by name")

    monkeypatch.setattr(hydra_utils, "_locate", spy)
    monkeypatch.setattr(hydra_instantiate, "_locate", spy)
    yield calls
    assert calls == []


def craft(ckpt_path: Path, out: Path, edit) -> Path:
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt = copy.deepcopy(ckpt)
    edit(ckpt["hyper_parameters"])
    ckpt["facediff"]["class_names"] = ckpt["hyper_parameters"]["class_names"]
    ckpt["facediff"]["model"] = ckpt["hyper_parameters"]["model"]  # what sampling rebuilds
    torch.save(ckpt, out)
    return out


def test_the_payloads_are_real(tiny_checkpoint, tmp_path):
    """Guard for the tests below: instantiating these configs does write the file."""
    victim = tmp_path / "victim"
    instantiate(payloads(victim, tiny_checkpoint)["copyfile"])
    assert victim.is_file()


@pytest.mark.parametrize("payload", ["exec", "os.system", "copyfile"])
@pytest.mark.parametrize("place", ["top", "nested"])
def test_crafted_model_config_is_refused_and_nothing_runs(
    tiny_checkpoint, tmp_path, payload, place, no_import_by_name
):
    victim = tmp_path / "victim"
    bad = payloads(victim, tiny_checkpoint)[payload]

    def edit(hp: dict) -> None:
        if place == "top":
            hp["model"] = bad
        else:
            hp["model"]["channel_mult"] = bad

    crafted = craft(tiny_checkpoint, tmp_path / "crafted.ckpt", edit)
    match = "not one of facediff's networks" if place == "top" else "key '_target_' is refused"
    with pytest.raises(CheckpointError, match=match):
        Generator.from_checkpoint(crafted)
    out = tmp_path / "out"
    cfg = sample_cfg(crafted, out)
    with pytest.raises(CheckpointError, match=match):
        sample(cfg)
    with pytest.raises(UnsafeValueError):
        DiffusionModule.load_from_checkpoint(crafted, weights_only=True)
    with pytest.raises(CheckpointError, match="Cannot resume"):
        check_resumable(crafted, {"model": {"name": "unet"}})
    assert not victim.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.ckpt"]


@pytest.mark.parametrize("payload", ["exec", "copyfile"])
@pytest.mark.parametrize("place", ["top", "augment", "split"])
def test_crafted_data_config_is_refused_before_any_work(
    tiny_checkpoint, demo_cache, tmp_path, payload, place, no_import_by_name
):
    victim = tmp_path / "victim"
    bad = payloads(victim, tiny_checkpoint)[payload]

    def edit(hp: dict) -> None:
        if place == "top":
            hp["data"] = {**hp["data"], **bad}
        else:
            hp["data"][place] = bad

    crafted = craft(tiny_checkpoint, tmp_path / "crafted.ckpt", edit)
    out = tmp_path / "out"
    cfg = eval_cfg(crafted, out, demo_cache)
    with pytest.raises(CheckpointError, match="Refusing the data config stored in"):
        evaluate(cfg)
    assert not victim.exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.ckpt"]


def test_legacy_target_of_a_known_class_still_loads(tiny_checkpoint, tmp_path, no_import_by_name):
    def edit(hp: dict) -> None:
        hp["model"] = {"_target_": "facediff.models.unet.UNet", **hp["model"]}
        del hp["model"]["name"]

    gen = Generator.from_checkpoint(craft(tiny_checkpoint, tmp_path / "old.ckpt", edit))
    assert type(gen.net).__name__ == "UNet"


def test_unknown_keys_and_values_are_refused():
    with pytest.raises(UnsafeValueError, match=r"no hyper-parameter\(s\) \['evil'\]"):
        build_model({"name": "unet", "evil": 1}, 16, 3)
    with pytest.raises(UnsafeValueError, match="Unknown model name='gpt'"):
        build_model({"name": "gpt"}, 16, 3)
    with pytest.raises(ValueError, match=r"needs the hyper-parameter\(s\) \['channel_mult', "):
        build_model({"name": "unet", "base_channels": 16}, 16, 3)
    with pytest.raises(UnsafeValueError, match="values must be None, bools"):
        build_model({"name": "unet", "dropout": b"0.1"}, 16, 3)
    with pytest.raises(UnsafeValueError, match="unknown key"):
        build_datamodule({"root": "x", "layout": "folder", "evil": 1})
    with pytest.raises(UnsafeValueError, match="always facediff's FaceDataModule"):
        build_datamodule({"_target_": "os.system", "root": "x", "layout": "folder"})


@pytest.mark.parametrize(
    "names, match",
    [
        (["../x", "hat", "beard"], "path separator"),
        (["..", "hat", "beard"], "starts with"),
        (["a/b", "hat", "beard"], "path separator"),
        (["a\\b", "hat", "beard"], "path separator"),
        (["", "hat", "beard"], "is empty"),
        (["nul\x00", "hat", "beard"], "control character"),
        ([".hidden", "hat", "beard"], "starts with"),
        (["hat", "hat", "beard"], "unique"),
    ],
)
def test_class_names_that_are_not_plain_names_are_refused(tiny_checkpoint, tmp_path, names, match):
    crafted = craft(tiny_checkpoint, tmp_path / "odd.ckpt", lambda hp: hp.update(class_names=names))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=match):
        sample(sample_cfg(crafted, out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.ckpt"]


@pytest.mark.parametrize("name", ["blend", "grid", "sweep.png", "denoising", "attention_hat"])
def test_a_class_named_like_an_output_is_refused(tiny_checkpoint, tmp_path, name):
    crafted = craft(
        tiny_checkpoint, tmp_path / "c.ckpt", lambda hp: hp.update(class_names=[name, "a", "b"])
    )
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"clash with sample\.py's own outputs"):
        sample(sample_cfg(crafted, out, "blend={a: 0.5, b: 0.5}"))
    assert not out.exists()
    # The other classes can still be sampled.
    sample(sample_cfg(crafted, out, "classes=[a, b]", "n_per_class=1", "steps=2", "device=cpu"))
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "grid.png", "samples.json"]


def test_folder_and_config_class_names_are_checked(tmp_path):
    for bad in (["../x"], ["a/b"]):
        with pytest.raises(UnsafeValueError):
            build_datamodule({"root": str(tmp_path), "layout": "folder", "classes": bad})
    (tmp_path / "faces" / "bad\\name").mkdir(parents=True)
    dm = build_datamodule({"root": str(tmp_path / "faces"), "layout": "folder"})
    with pytest.raises(UnsafeValueError, match="path separator"):
        dm.class_names  # noqa: B018
    with pytest.raises(UnsafeValueError, match=r"starts with '\.'"):
        build_datamodule({"root": "x", "layout": "utkface", "classes": {"..": 0}})


def test_name_and_path_helpers(tmp_path):
    assert check_name("indian", "Class name") == "indian"
    assert inside(tmp_path, "a", "b.png") == (tmp_path / "a" / "b.png").resolve()
    for parts in (("..", "x"), ("/etc/passwd",), ("a/../../x",)):
        with pytest.raises(UnsafeValueError, match="outside"):
            inside(tmp_path, *parts)


def sample_cfg(ckpt: Path, out: Path, *overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("sample", overrides=[f"ckpt={ckpt}", f"out={out}", *overrides])


def eval_cfg(ckpt: Path, out: Path, cache: Path, *overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[f"ckpt={ckpt}", f"out={out}", f"paths.cache_dir={cache}", "device=cpu",
                       *overrides],
        )  # fmt: skip
