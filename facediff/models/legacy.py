"""Reading UNet weights saved before blocks were named by resolution (checkpoint format 1).

Format 1 stored the UNet as ``down.<level>.res.<i>``, ``down.<level>.attn.<i>``,
``down.<level>.resample``, ``mid.res0|attn|res1``, and the decoder ``up.<level>...`` in level
order (run in reverse). Format 2 names the same modules by resolution in execution order
(``enc.16x16_block0.res``, ``enc.8x8_down``, ``mid.8x8_in0.attn``, ``dec.16x16_up``, ...). The
tensors are the same; only their names move, so old checkpoints keep loading.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# The UNet's defaults while format 1 was written: a format-1 model config may rely on them.
FORMAT1_UNET_DEFAULTS: dict[str, Any] = {
    "base_channels": 64,
    "channel_mult": [1, 2, 2, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [16, 8],
    "attn_heads": 4,
    "dropout": 0.1,
    "grad_checkpoint": False,
    "groups": 32,
}

_LEVEL = re.compile(r"^(down|up)\.(\d+)\.(res|attn)\.(\d+)\.(.*)$")
_RESAMPLE = re.compile(r"^(down|up)\.(\d+)\.resample\.(.*)$")
_MID = {"mid.res0.": "in0.res.", "mid.attn.": "in0.attn.", "mid.res1.": "in1.res."}


def upgrade_unet_key(key: str, image_size: int, n_levels: int) -> str:
    """The format-2 name of one format-1 UNet parameter or buffer name (others unchanged)."""

    def res(level: int) -> str:
        r = image_size >> level
        return f"{r}x{r}"

    if m := _LEVEL.match(key):
        part, level, kind, i, rest = m.groups()
        side = "enc" if part == "down" else "dec"
        return f"{side}.{res(int(level))}_block{i}.{kind}.{rest}"
    if m := _RESAMPLE.match(key):
        part, level, rest = m.groups()
        # A level's downsampler ends it (the next level begins at half the size); an
        # upsampler ends a decoder level (the next one, run after it, is at twice the size).
        if part == "down":
            return f"enc.{res(int(level) + 1)}_down.{rest}"
        return f"dec.{res(int(level) - 1)}_up.{rest}"
    for old, new in _MID.items():
        if key.startswith(old):
            return f"mid.{res(n_levels - 1)}_{new}{key[len(old) :]}"
    return key


def upgrade_unet_state(
    state: Mapping[str, Any], image_size: int, n_levels: int, prefix: str = "net."
) -> dict[str, Any]:
    """`state` with every format-1 UNet key under `prefix` renamed to format 2."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            key = prefix + upgrade_unet_key(key[len(prefix) :], image_size, n_levels)
        out[key] = value
    return out
