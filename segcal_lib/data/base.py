"""The sample type every data set returns, and the constants all readers share."""

from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE_INDEX = 255


class Sample(NamedTuple):
    """One image and its label map; a NamedTuple so that ``torch.utils.data.default_collate`` batches it.

    Attributes
    ----------
    image : float32 tensor (3, H, W), RGB in [0, 1].
    label : int64 tensor (H, W), train ids in [0, num_classes) or ``IGNORE_INDEX`` (255).
    name : a stable identifier of the image (file stem, or ``"synthetic/<split>/<index>"``).
    """

    image: torch.Tensor
    label: torch.Tensor
    name: str


def data_identity(dataset) -> dict | None:
    """``dataset.fingerprint()`` when the data set has one (what identifies its data: for a folder, its root, file
    names and sizes), else None. Caches add it to their keys."""
    fingerprint = getattr(dataset, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None
