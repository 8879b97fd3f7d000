"""The denoising networks facediff knows, by name, and building one from a plain config.

A model config (conf/model/*.yaml, and the copy stored in every checkpoint) is
`{"name": <registry key>, <hyper-parameter>: <plain value>, ...}`. The network class is looked
up in `MODELS`, never imported from a string, so a checkpoint cannot make facediff call code
of its choosing. Checkpoints written before the registry carry `_target_:
facediff.models.unet.UNet` instead of `name`; such a `_target_` is accepted only when it is
exactly the import path of a registered class, and it is never imported.

To add a network, add one entry to `MODELS`. Its constructor takes `image_size`,
`num_classes` and its hyper-parameters as keywords; the keys a config may set are the fields of
its `config_class` dataclass when it has one (as `UNet` has `UNetConfig`), else its named
keyword parameters. Its forward is `forward(x, t, y)`. A network whose `config` has `to_dict()`
gets that full, resolved config stored in every checkpoint (`model_record`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from facediff.models.original import OriginalUNet
from facediff.models.unet import UNet
from facediff.untrusted import UnsafeValueError, check_plain

MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "original": OriginalUNet}

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


def _hyper_parameters(cls: type[nn.Module]) -> dict[str, bool]:
    """{hyper-parameter name: whether it has a default} for `cls`, read off its config
    dataclass or, without one, its __init__ (image_size and num_classes left out)."""
    config_class = getattr(cls, "config_class", None)
    if config_class is not None:
        missing = dataclasses.MISSING
        found = {f.name: f.default is not missing or f.default_factory is not missing
                 for f in dataclasses.fields(config_class)}  # fmt: skip
    else:
        params = inspect.signature(cls.__init__).parameters.values()
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        found = {p.name: p.default is not inspect.Parameter.empty
                 for p in params if p.kind in kinds and p.name != "self"}  # fmt: skip
    return {name: default for name, default in found.items() if name not in FROM_DATA}


def model_parameters(cls: type[nn.Module]) -> list[str]:
    """The hyper-parameters a config may set for `cls` (besides image_size, num_classes)."""
    return list(_hyper_parameters(cls))


def required_parameters(cls: type[nn.Module]) -> list[str]:
    """The hyper-parameters a config must set for `cls`: those without a default."""
    return [name for name, default in _hyper_parameters(cls).items() if not default]


def normalise_model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`{"name": key, **hyper-parameters}` with every value checked as plain data.

    Raises UnsafeValueError for an unknown network, an unknown key (listing the known ones),
    or a value that is not plain data (e.g. a nested `_target_`).
    """
    if not isinstance(config, Mapping):
        raise UnsafeValueError(f"A model config must be a mapping, got {config!r}.")
    key = model_key(config)
    allowed = model_parameters(MODELS[key])
    kwargs = {k: v for k, v in config.items() if k not in ("name", "_target_", *FROM_DATA)}
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UnsafeValueError(
            f"Model {key!r} has no hyper-parameter(s) {unknown}; it takes {allowed} "
            f"({', '.join(FROM_DATA)} come from the data)."
        )
    for k in FROM_DATA:  # present in the full config a checkpoint stores (model_record)
        if k in config and (isinstance(config[k], bool) or not isinstance(config[k], int)):
            raise UnsafeValueError(f"model.{k} must be an integer, got {config[k]!r}.")
    data = {k: config[k] for k in FROM_DATA if k in config}
    return {"name": key, **data, **{k: check_plain(v, f"model.{k}") for k, v in kwargs.items()}}


def build_model(config: Mapping[str, Any], image_size: int, num_classes: int) -> nn.Module:
    """The network a model config describes, for images of `image_size` and `num_classes`."""
    plain = normalise_model_config(config)
    key = plain.pop("name")
    cls = MODELS[key]
    missing = [name for name in required_parameters(cls) if name not in plain]
    if missing:
        raise ValueError(
            f"Model {key!r} needs the hyper-parameter(s) {missing}, which the config does not "
            "set. Fix: start from a conf/model/*.yaml (model=unet_attn, ...), which sets every one."
        )
    given = {"image_size": int(image_size), "num_classes": int(num_classes)}
    for k, value in given.items():
        if plain.pop(k, value) != value:
            raise UnsafeValueError(f"The model config has {k}={config[k]}, the data {value}.")
    return cls(**given, **plain)


def model_record(net: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint stores to rebuild `net`: its registry name and its full, resolved
    config; None for a network without a `config.to_dict()` (its hparams config is used)."""
    keys = [key for key, cls in MODELS.items() if type(net) is cls]
    config = getattr(net, "config", None)
    if not keys or not hasattr(config, "to_dict"):
        return None
    return {"name": keys[0], **config.to_dict()}
