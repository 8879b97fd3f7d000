"""Shared data fixtures: tiny Pillow-drawn datasets built in tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_UTKFACE = Path(__file__).parents[2] / "shared/data/utkface"

ImageWriter = Callable[..., Path]
DEMO_CLASSES = ("glasses", "hat", "beard")


@pytest.fixture(autouse=True)
def no_inherited_cpu_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """`precision: auto`'s CPU decision travels to child processes in the environment
    (facediff.hardware.CHOICE_ENV): each test starts without one and leaves none behind, so
    what a test's train.py subprocess decides never depends on the tests before it."""
    from facediff.hardware import CHOICE_ENV

    monkeypatch.setenv(CHOICE_ENV, "")


@pytest.fixture(scope="session")
def demo_faces() -> Callable[[int, int], tuple[object, object]]:
    """`demo_faces(size, per_class)`: demo faces of every class as (N, 3, size, size) floats in
    [0, 1] and their labels (N,), in class order."""
    import torch

    from facediff.data.demo import draw_demo_face

    def draw(size: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for c, name in enumerate(DEMO_CLASSES):
            for i in range(per_class):
                pixels = np.asarray(draw_demo_face(name, i, size=size, seed=0), dtype=np.float32)
                images.append(torch.from_numpy(pixels).permute(2, 0, 1) / 255)
                labels.append(c)
        return torch.stack(images), torch.tensor(labels)

    return draw


def _write_image(path: Path, seed: int, size: int | tuple[int, int] = 24) -> Path:
    """Write a small image whose pixels (and so bytes) are unique to ``seed``."""
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 225, 3)
    pixels = np.clip(base + rng.integers(-25, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def write_image() -> ImageWriter:
    """``write_image(path, seed, size=24)``: write a unique tiny image (format from suffix)."""
    return _write_image


def utk_name(age: int, gender: int, race: int, serial: int, chip: bool = True) -> str:
    return f"{age}_{gender}_{race}_{20170101000000000 + serial:017d}.jpg" + (
        ".chip.jpg" if chip else ""
    )


MALFORMED_NAMES = [
    "39_1_20170116174525125.jpg.chip.jpg",  # race field missing
    "24_0_1_20170116220224657 .jpg.chip.jpg",  # space before .jpg
    "55_0_0_20170116232725357jpg.chip.jpg",  # no dot before jpg
    "14_0_0_2017011022340900.jpg.chip.jpg",  # 16-digit datetime
    "28_1_2_201701161846515488.jpg.chip.jpg",  # 18-digit datetime
]


@pytest.fixture
def malformed_names() -> list[str]:
    """One example of each malformed UTKFace name kind found in the public release."""
    return list(MALFORMED_NAMES)


@pytest.fixture
def utk_root(tmp_path: Path) -> Path:
    """Flat UTKFace-like folder: 6 images per race 0..4 (ages 5..55, alternating gender, one
    without the ``.chip.jpg`` suffix per race) plus the five malformed-name kinds."""
    root = tmp_path / "utk"
    serial = 0
    for race in range(5):
        for k in range(6):
            age = 5 + 10 * k
            name = utk_name(age, k % 2, race, serial, chip=k != 5)
            _write_image(root / name, seed=serial)
            serial += 1
    for i, name in enumerate(MALFORMED_NAMES):
        _write_image(root / name, seed=1000 + i)
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """``root/<class>/`` dataset: a (8 images), b (6), c (5) with mixed-case extensions, plus a
    text file and a hidden file that must be ignored."""
    root = tmp_path / "faces"
    suffixes = [".jpg", ".png", ".JPG", ".jpeg", ".PNG"]
    serial = 0
    for name, count in (("a", 8), ("b", 6), ("c", 5)):
        for k in range(count):
            _write_image(root / name / f"img{k:02d}{suffixes[k % len(suffixes)]}", seed=serial)
            serial += 1
    (root / "a" / "notes.txt").write_text("not an image")
    _write_image(root / "b" / ".hidden.jpg", seed=999)
    return root


@pytest.fixture
def real_utkface() -> Path:
    """The shared 5,008-file UTKFace sample; skips when it is not present."""
    if not REAL_UTKFACE.is_dir():
        pytest.skip(f"real UTKFace sample not found at {REAL_UTKFACE}")
    return REAL_UTKFACE


# ------------------------------------------------------------------ training / config fixtures
CONF_DIR = Path(__file__).parents[1] / "conf"


def compose_train(out_dir: Path, *overrides: str):
    """The train config as train.py composes it, writing to `out_dir`.

    ``${hydra:...}`` only resolves inside @hydra.main, so the output folder is overridden here.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={out_dir}",
                f"paths.cache_dir={out_dir.parent / 'cache'}",
                *overrides,
            ],
        )


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., object]:
    """``compose_cfg(*overrides, name="run")``: the train config, writing to tmp_path/name."""

    def _compose(*overrides: str, name: str = "run"):
        return compose_train(tmp_path / name, *overrides)

    return _compose


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per test session, so the tiny demo data is drawn only once."""
    return tmp_path_factory.mktemp("cache")


TINY = (
    "experiment=demo",
    "logger=none",
    "data.demo={n_per_class: 16, size: 16, seed: 0}",
    "data.image_size=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "model.channel_mult=[1,2]",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",  # the demo's auto would pick bf16 on an AMX CPU: keep tests fp32
    "trainer.enable_progress_bar=false",
    "callbacks.model_summary=null",
    "callbacks.ema.start_step=0",
    "callbacks.sample_grid.sampling.steps=3",
    "callbacks.sample_grid.n_per_class=2",
    "callbacks.eval_metrics=null",
)


@pytest.fixture
def tiny_cfg(compose_cfg, demo_cache: Path) -> Callable[..., object]:
    """``tiny_cfg(*overrides, name=...)``: experiment=demo shrunk to 16x16, 16 images per class,
    a two-level unet_tiny and 3-step sample grids: a fit takes seconds on a CPU."""

    def _tiny(*overrides: str, name: str = "run"):
        return compose_cfg(*TINY, f"paths.cache_dir={demo_cache}", *overrides, name=name)

    return _tiny


@pytest.fixture(scope="session")
def tiny_checkpoint(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of a 2-epoch tiny demo run (with EMA), shared by the sampling tests."""
    from facediff.lightning.training import run

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    run(
        compose_train(
            out,
            *TINY,
            f"paths.cache_dir={demo_cache}",
            "trainer.max_epochs=2",
            "callbacks.sample_grid=null",
        )
    )
    return out / "checkpoints" / "last.ckpt"
