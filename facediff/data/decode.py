"""Reading, hashing and decoding single image files.

Shared by the index builder (decode everything once) and the dataset's no-cache mode (decode per
sample) so both produce exactly the same pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

# Limits on one image file, checked before any pixel is decoded. A face photo is far below
# both; a larger file or a header claiming more pixels is a mistake or a decompression bomb
# (a few KB that decode to gigabytes) and is skipped as unreadable, never decoded. Raise them
# here (e.g. facediff.data.decode.MAX_IMAGE_PIXELS = 200_000_000) for unusually large photos.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # 8192 x 8192; Pillow's own warning starts at ~89 M
MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass
class Decoded:
    """Outcome of reading one file. ``image`` is (3, S, S) uint8 when a load size was given."""

    digest: str
    width: int
    height: int
    image: torch.Tensor | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def hash_bytes(data: bytes) -> str:
    """Content hash used to find byte-identical duplicates."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def to_square_tensor(image: Image.Image, load_size: int) -> torch.Tensor:
    """Center-crop ``image`` to a square, resize it to ``load_size`` and return (3, S, S) uint8.

    UTKFace chips are square already, so for them this is a plain (antialiased bicubic) resize.
    """
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != load_size:
        image = image.resize((load_size, load_size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_bytes(
    data: bytes, load_size: int | None = None
) -> tuple[Image.Image, torch.Tensor | None]:
    """Fully decode ``data`` to RGB (raises on corrupt/truncated data, and on an image of more
    than ``MAX_IMAGE_PIXELS`` pixels before decoding it)."""
    with warnings.catch_warnings():  # Pillow only warns between its limit and twice that
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        opened = Image.open(io.BytesIO(data))
    with opened:
        width, height = opened.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"{width}x{height} pixels is more than facediff's limit of {MAX_IMAGE_PIXELS} "
                "(a decompression bomb, or a photo to shrink first; the limit is "
                "facediff.data.decode.MAX_IMAGE_PIXELS)"
            )
        opened.load()
        image = ImageOps.exif_transpose(opened).convert("RGB")
    tensor = to_square_tensor(image, load_size) if load_size is not None else None
    return image, tensor


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file; OSError for a file over ``MAX_FILE_BYTES`` (not read)."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise OSError(
                f"{size} bytes is more than facediff's limit of {MAX_FILE_BYTES} for one image "
                "file (facediff.data.decode.MAX_FILE_BYTES)"
            )
        return handle.read()


def read_and_decode(path: str | os.PathLike[str], load_size: int | None = None) -> Decoded:
    """Read, hash and decode one file; never raises, failures are reported in ``error``."""
    try:
        data = read_bytes(path)
    except OSError as exc:
        return Decoded("", 0, 0, None, f"cannot read: {exc}")
    if not data:
        return Decoded("", 0, 0, None, "empty file (0 bytes): an interrupted download or copy")
    digest = hash_bytes(data)
    try:
        image, tensor = decode_bytes(data, load_size)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return Decoded(digest, 0, 0, None, f"cannot decode: {type(exc).__name__}: {exc}")
    return Decoded(digest, image.width, image.height, tensor)


def load_image(path: str | os.PathLike[str], load_size: int) -> torch.Tensor:
    """Decode ``path`` to a (3, load_size, load_size) uint8 tensor; raises on failure."""
    image, _ = decode_bytes(read_bytes(path))
    return to_square_tensor(image, load_size)
