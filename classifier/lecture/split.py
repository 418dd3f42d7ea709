"""The lecture's split: scale the images to [0, 1], train on the first part, validate on the last.

    train, val, test = prepare(((x_train, y_train), (x_test, y_test)), limit=None, val_split=0.2)

The lecture's `x_train[:trainlen]` / `x_train[trainlen:]` with `trainlen = int(len * (1 - val_ratio))`,
on whatever arrays a loader gave (classifier/machinery/datasets.py reads the published files).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifier.config import UserError


@dataclass(frozen=True)
class Split:
    """Images (float32, NHWC, [0, 1]) and their 1-D int32 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)



def prepare(arrays, limit: int | None = None, val_split: float = 0.2) -> tuple[Split, Split, Split]:
    """Scale to [0, 1] and split as the lecture does: first part trains, last part validates.

    Args:
        arrays: what `load_arrays` returns.
        limit: keep only the first `limit` training images (None keeps all).
        val_split: the fraction at the end of the (limited) training set that validates.

    Returns:
        (train, validation, test) splits.
    """
    (train_images, train_labels), (test_images, test_labels) = arrays
    if limit:
        if limit > len(train_labels):
            raise UserError(f"limit {limit} is larger than the {len(train_labels)} training images; use 1 to {len(train_labels)}, or leave --limit out for all")
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    cut = int(round(len(train_labels) * (1.0 - val_split)))
    if cut < 1 or cut >= len(train_labels):
        raise UserError(
            f"val_split {val_split} leaves {cut} training and {len(train_labels) - cut} validation images "
            f"of {len(train_labels)}; both need at least 1"
        )
    return (
        Split(_scale(train_images[:cut]), train_labels[:cut]),
        Split(_scale(train_images[cut:]), train_labels[cut:]),
        Split(_scale(test_images), test_labels),
    )


def _scale(images: np.ndarray) -> np.ndarray:
    # Dividing in float32 halves the memory of the lecture's `x / 255.0` (float64).
    return images.astype(np.float32) / np.float32(255.0)
