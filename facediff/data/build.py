"""Building the data module from a plain config (conf/data/*.yaml, or the copy a checkpoint
stores for evaluate.py).

The class is always facediff's own `FaceDataModule`: a `_target_` key is accepted only when it
names that class exactly, and it is never imported. Every other key must be one of
`FaceDataModule`'s parameters and every value plain data (see `facediff.untrusted`), so a
crafted checkpoint cannot make evaluate.py call code of its choosing.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from facediff.data.datamodule import FaceDataModule
from facediff.untrusted import UnsafeValueError, check_plain

DATAMODULE_PATHS = ("facediff.data.FaceDataModule", "facediff.data.datamodule.FaceDataModule")


def datamodule_parameters() -> list[str]:
    params = inspect.signature(FaceDataModule.__init__).parameters
    return [name for name in params if name != "self"]


def check_data_config(config: Mapping[str, Any], where: str = "data") -> dict[str, Any]:
    """The keyword arguments of `FaceDataModule` a data config describes, checked."""
    if isinstance(config, DictConfig):  # a composed config: plain containers, resolved
        config = OmegaConf.to_container(config, resolve=True)
    if not isinstance(config, Mapping):
        raise UnsafeValueError(f"{where} must be a mapping, got {config!r}.")
    target = config.get("_target_")
    if target is not None and target not in DATAMODULE_PATHS:
        raise UnsafeValueError(
            f"{where}._target_={target!r} is refused: the data module is always facediff's "
            f"FaceDataModule, and facediff never imports a class a config or checkpoint names. "
            f"Fix: remove _target_ or set it to {DATAMODULE_PATHS[0]}."
        )
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    allowed = datamodule_parameters()
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UnsafeValueError(
            f"{where} has unknown key(s) {unknown}; FaceDataModule takes {allowed}."
        )
    checked = check_plain(kwargs, where, mappings=True)
    assert isinstance(checked, dict)
    return checked


def build_datamodule(config: Mapping[str, Any], where: str = "data") -> FaceDataModule:
    """`FaceDataModule(**checked config)`."""
    return FaceDataModule(**check_data_config(config, where))
