"""Image file decoding and resizing shared by the file-based sources.

Here live the readers that turn one file into a validated [H, W, C] numpy array (PNG/JPEG through
Pillow, TIFF/GeoTIFF through tifffile), the square center-crop + antialiased resize that gives the
pipeline static shapes, and `CorruptImageError`, the one error every source raises for a bad file.
Nothing here knows about labels, datasets or JAX: these are per-file pure functions, cheap to call in
Grain worker processes.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import tifffile
from PIL import Image

from oceansar.errors import DataError

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg")
TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = PIL_EXTENSIONS + TIFF_EXTENSIONS


class CorruptImageError(DataError):
    """A file that cannot become a valid image: unreadable, truncated, empty, wrong shape, NaN/inf.

    A `DataError` (so a `ValueError`): the command line prints it as one line naming the file.

    Attributes:
      path: the offending file.
      reason: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Grain workers pickle exceptions back to the main process.
        return (CorruptImageError, (self.path, self.reason))


def _decode_pil(path: pathlib.Path, mode: str | None = None) -> np.ndarray:
    with Image.open(path) as im:
        # `load()` forces the full decode: a truncated JPEG/PNG fails here, not later.
        im.load()
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("L" if im.mode == "1" else "RGB")
        if mode is not None and im.mode != mode and im.mode in ("L", "RGB", "RGBA"):
            im = im.convert(mode)
        return np.asarray(im)


def _decode_tiff(path: pathlib.Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise CorruptImageError(path, "TIFF file holds no image series")
        series = tif.series[0]
        axes = series.axes
        arr = series.asarray()
    # Planar multi-band GeoTIFFs store bands first ('SYX', 'CYX', 'QYX'); move them last.
    if arr.ndim == 3 and axes[-1] not in "SC" and axes[0] in "SCQI":
        arr = np.moveaxis(arr, 0, -1)
    return arr


def decode_image(path: str | os.PathLike, *, channels: int | None = None, convert: bool = False) -> np.ndarray:
    """Reads one image file into a validated [H, W, C] array in its native dtype.

    Args:
      path: a PNG/JPEG (Pillow) or TIFF/GeoTIFF (tifffile) file.
      channels: the channel count the caller expects, or None to accept any.
      convert: 8-bit grayscale/RGB(A) PNG and JPEG files are converted to `channels` (1: luminance, Pillow's "L";
        3: RGB) instead of failing the channel check. TIFFs are never converted.

    Returns:
      [H, W, C] array: uint8/uint16/int16/float32/complex as stored in the file.

    Raises:
      CorruptImageError: empty, unreadable, truncated, not 2-D/3-D, zero-sized, wrong channel
        count, or with a NaN/inf pixel. The message names the file.
    """
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CorruptImageError(path, f"cannot stat file ({e})") from e
    if size == 0:
        raise CorruptImageError(path, "empty file")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_EXTENSIONS:
            arr = _decode_tiff(path)
        elif suffix in PIL_EXTENSIONS:
            arr = _decode_pil(path, {1: "L", 3: "RGB"}.get(channels) if convert else None)
        else:
            raise CorruptImageError(
                path, f"unsupported extension {suffix!r} (expected one of {IMAGE_EXTENSIONS})")
    except CorruptImageError:
        raise
    except Exception as e:  # Pillow and tifffile raise a zoo of types for damaged files.
        raise CorruptImageError(path, f"cannot decode ({type(e).__name__}: {e})") from e
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise CorruptImageError(path, f"expected a 2-D or 3-D image, got shape {arr.shape}")
    if min(arr.shape) == 0:
        raise CorruptImageError(path, f"image has a zero-sized dimension, shape {arr.shape}")
    if channels is not None and arr.shape[-1] != channels:
        raise CorruptImageError(
            path, f"expected {channels} channel(s), got shape {arr.shape}")
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise CorruptImageError(path, "contains NaN or inf pixels")
    return arr


def center_crop_square(arr: np.ndarray) -> np.ndarray:
    """The largest centred square of an [H, W, C] array."""
    h, w = arr.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return arr[top:top + s, left:left + s]


def resize_square(arr: np.ndarray, size: int) -> np.ndarray:
    """Center-crops an [H, W, C] array to a square and resizes it to [size, size, C].

    Downsampling uses Pillow's antialiased bilinear filter (its support widens with the scale
    factor, so it averages like an area filter and does not alias speckle); upsampling is plain
    bilinear. uint8 stays uint8; every other dtype is resized in float32 and returned as float32
    (callers cast back with `to_source_dtype`).
    """
    arr = center_crop_square(arr)
    if arr.shape[0] == size:
        return arr if arr.dtype == np.uint8 else arr.astype(np.float32)
    if arr.dtype == np.uint8:
        if arr.shape[-1] == 3:
            return np.asarray(Image.fromarray(arr, "RGB").resize((size, size), Image.BILINEAR))
        bands = [Image.fromarray(np.ascontiguousarray(arr[..., c]), "L").resize(
            (size, size), Image.BILINEAR) for c in range(arr.shape[-1])]
        return np.stack([np.asarray(b) for b in bands], axis=-1)
    arr = arr.astype(np.float32)
    bands = [Image.fromarray(np.ascontiguousarray(arr[..., c]), "F").resize(
        (size, size), Image.BILINEAR) for c in range(arr.shape[-1])]
    return np.stack([np.asarray(b) for b in bands], axis=-1)


def to_source_dtype(arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Casts a decoded (and possibly resized) image to a dtype the pipeline ships.

    uint8 stays uint8. Other integer types are scaled by their maximum into [0, 1] float16 (a
    16-bit DN does not fit float16's range as is). Float data becomes float16 unchanged, which must
    stay finite. Complex data is an error here: its conversion is sensor-specific (see wv_files).

    Raises:
      CorruptImageError: complex data, or float values beyond float16's range.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        return (arr.astype(np.float32) / float(info.max)).astype(np.float16)
    if arr.dtype.kind == "f":
        out = arr.astype(np.float16)
        if not np.all(np.isfinite(out)):
            raise CorruptImageError(path, "float values exceed the float16 range")
        return out
    raise CorruptImageError(path, f"unsupported pixel dtype {arr.dtype}")
