"""The denoising networks facediff knows, by name, and building one from a plain config.

A model config (conf/model/*.yaml, and the copy stored in every checkpoint) is
`{"name": <registry key>, <hyper-parameter>: <plain value>, ...}`. The network class is looked
up in `MODELS`, never imported from a string, so a checkpoint cannot make facediff call code
of its choosing. Checkpoints written before the registry carry `_target_:
facediff.models.unet.UNet` instead of `name`; such a `_target_` is accepted only when it is
exactly the import path of a registered class, and it is never imported.

To add a network, add one entry to `MODELS`: its constructor must take
`(image_size, num_classes, **hyper_parameters)` with named keyword parameters (they are the
keys a config may set) and its forward must be `forward(x, t, y)`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from facediff.models.unet import UNet
from facediff.untrusted import UnsafeValueError, check_plain

MODELS: dict[str, type[nn.Module]] = {"unet": UNet}

# Filled in by the builder, never by the config: the data decides them.
FROM_DATA = ("image_size", "num_classes")


def import_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def model_key(config: Mapping[str, Any]) -> str:
    """The registry key a model config names (by `name`, or a legacy exact `_target_`)."""
    name, target = config.get("name"), config.get("_target_")
    if name is not None and target is not None:
        raise UnsafeValueError("A model config sets both `name` and `_target_`; keep only `name`.")
    if target is not None:
        by_path = {import_path(cls): key for key, cls in MODELS.items()}
        if target not in by_path:
            raise UnsafeValueError(
                f"Model config _target_={target!r} is not one of facediff's networks "
                f"({sorted(by_path)}); facediff never imports a class a config or checkpoint "
                f"names. Fix: set `name` to one of {sorted(MODELS)} (conf/model/*.yaml)."
            )
        return by_path[target]
    if name not in MODELS:
        raise UnsafeValueError(
            f"Unknown model name={name!r}. Fix: set `name` to one of {sorted(MODELS)} "
            "(see conf/model/)."
        )
    return str(name)


def model_parameters(cls: type[nn.Module]) -> list[str]:
    """The hyper-parameters a config may set for `cls`: its named keyword parameters."""
    params = inspect.signature(cls.__init__).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds and p.name not in ("self", *FROM_DATA)]


def normalise_model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`{"name": key, **hyper-parameters}` with every value checked as plain data.

    Raises UnsafeValueError for an unknown network, an unknown key (listing the known ones),
    or a value that is not plain data (e.g. a nested `_target_`).
    """
    if not isinstance(config, Mapping):
        raise UnsafeValueError(f"A model config must be a mapping, got {config!r}.")
    key = model_key(config)
    allowed = model_parameters(MODELS[key])
    kwargs = {k: v for k, v in config.items() if k not in ("name", "_target_")}
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UnsafeValueError(
            f"Model {key!r} has no hyper-parameter(s) {unknown}; it takes {allowed} "
            f"({', '.join(FROM_DATA)} come from the data)."
        )
    return {"name": key, **{k: check_plain(v, f"model.{k}") for k, v in kwargs.items()}}


def build_model(config: Mapping[str, Any], image_size: int, num_classes: int) -> nn.Module:
    """The network a model config describes, for images of `image_size` and `num_classes`."""
    plain = normalise_model_config(config)
    cls = MODELS[plain.pop("name")]
    return cls(image_size=int(image_size), num_classes=int(num_classes), **plain)
