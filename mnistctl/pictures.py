"""Your own digit images -> MNIST-style 28x28 inputs (Pillow and numpy; no TensorFlow).

MNIST digits are white ink on black, fitted into a 20x20 box keeping their aspect ratio, and
centred by their centre of mass in a 28x28 field. A photo or a drawing of a digit gets the same
treatment, or the network sees something it never learned from.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnistctl.errors import DamagedFileError, MnistctlError
from mnistctl.files import read_regular

MAX_PIXELS = 4096 * 4096  # larger than any sensible digit picture; refuse before decoding
# The digit ends up 20 pixels tall: a working copy of at most 512 pixels a side loses nothing
# that survives that, and keeps each request's float arrays at 1 MB instead of 64 MB.
WORKING_SIDE = 512
MAX_BYTES = 10 << 20
INK_THRESHOLD = 0.2  # a pixel at >= 20% of the strongest ink counts as ink for the bounding box


class ImageError(MnistctlError):
    """A file that is not a usable picture of a digit."""


def load_image(data: bytes, name: str = "image") -> Image.Image:
    """Decode PNG/JPEG/... bytes, refusing non-images and absurd sizes before decoding them.

    The result is at most :data:`WORKING_SIDE` pixels a side: JPEGs are decoded at a reduced
    scale directly, other formats are shrunk as soon as they are decoded.
    """
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name}: {len(data):,} bytes; images up to {MAX_BYTES:,} bytes are accepted")
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {width}x{height} pixels is too large (at most {MAX_PIXELS:,} pixels)"
                )
            image.draft(None, (WORKING_SIDE, WORKING_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
            image.load()
            image = _shrunk(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: too many pixels to be a digit picture") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"{name}: damaged image ({err})") from None
    return image


def _shrunk(image: Image.Image) -> Image.Image:
    """``image`` with at most WORKING_SIDE pixels a side, averaging (not dropping) the ink."""
    if max(image.size) <= WORKING_SIDE:
        return image
    if image.mode == "P":  # palette images resize by nearest neighbour: lose no strokes
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("L")
    image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
    return image


def to_mnist(image: Image.Image, name: str = "image") -> np.ndarray:
    """The MNIST-style float32 [28, 28] array in [0, 1] for a picture of one digit."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent drawings (like the server's canvas): ink is what is opaque.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    gray = np.asarray(ImageOps.grayscale(image), dtype=np.float32) / 255.0
    if gray.size == 0:
        raise ImageError(f"{name}: the image has no pixels")
    if np.median(_border(gray)) > 0.5:  # dark ink on a light background: invert to white on black
        gray = 1.0 - gray
    gray = np.clip(gray - np.median(_border(gray)), 0.0, None)  # paper that is not quite black
    if gray.max() <= 0.05:
        raise ImageError(f"{name}: no digit found (the image is blank)")
    gray = gray / gray.max()
    rows, cols = np.nonzero(gray >= INK_THRESHOLD)
    crop = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = crop.shape
    scale = 20.0 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fitted = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    fitted = np.clip(fitted, 0.0, 1.0)
    return _centre_by_mass(fitted)


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Place ``digit`` in a 28x28 field so its centre of mass is at the centre (14, 14)."""
    field = np.zeros((28, 28), dtype=np.float32)
    height, width = digit.shape
    total = digit.sum()
    rows, cols = np.indices(digit.shape)
    cy, cx = (rows * digit).sum() / total, (cols * digit).sum() / total
    top = int(np.rint(14 - cy))
    left = int(np.rint(14 - cx))
    top = min(max(top, 0), 28 - height)
    left = min(max(left, 0), 28 - width)
    field[top : top + height, left : left + width] = digit
    return field


def preprocess(data: bytes, name: str = "image") -> np.ndarray:
    """Bytes of a picture -> float32 [28, 28] in [0, 1], MNIST-style."""
    return to_mnist(load_image(data, name), name)


def read_image_file(path: Path) -> np.ndarray:
    """A picture file, prepared as :func:`preprocess` does; ImageError names the file."""
    try:  # a regular file, its size checked before it is read (not a FIFO, /dev/zero, 3 GB)
        data = read_regular(path, MAX_BYTES, "picture")
    except DamagedFileError as error:
        raise ImageError(str(error)) from None
    return preprocess(data, str(path))
