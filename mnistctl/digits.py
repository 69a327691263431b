"""Digits side by side: the mosaic of the dashboard's digit panels and of TensorBoard's image
of the misrecognised test digits, drawn the same way in both (numpy and Pillow only)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WRONG = np.array([0.85, 0.1, 0.1])  # the background of a misrecognised digit, as in the talk
# The one way a digit's labels are written, on the dashboard, the gallery and the live page:
# the prediction alone when it is right, "true→predicted" when it is not.
CONVENTION = "the prediction under each; a mistake as true→predicted, on red"


def digit_label(true: int, predicted: int) -> str:
    return str(predicted) if true == predicted else f"{true}→{predicted}"


def mosaic(images: np.ndarray, wrong: np.ndarray, columns: int) -> np.ndarray:
    """RGB mosaic of digits, white ink on black, misrecognised ones on red."""
    count = len(images)
    rows = -(-count // columns)
    out = np.ones((rows * 30, columns * 30, 3))
    for i, (image, bad) in enumerate(zip(images, wrong, strict=True)):
        r, c = divmod(i, columns)
        ink = image.astype(np.float64)[..., None] / 255.0
        background = WRONG if bad else np.zeros(3)
        out[r * 30 + 1 : r * 30 + 29, c * 30 + 1 : c * 30 + 29] = ink + (1 - ink) * background
    return out


def mosaic_png(images: np.ndarray, columns: int = 10) -> tuple[int, int, bytes]:
    """Misrecognised digits as a PNG mosaic (on red, as everywhere): (height, width, bytes)."""
    tiles = mosaic(images, np.ones(len(images), bool), min(columns, len(images)))
    buffer = io.BytesIO()
    Image.fromarray(np.round(tiles * 255).astype(np.uint8)).save(buffer, format="PNG")
    return tiles.shape[0], tiles.shape[1], buffer.getvalue()
