"""Seeded synthetic segmentation data: noisy images of discs (or balls) on a background.

Each image holds ``objects`` discs whose total area is a chosen number of pixels (or a fraction
``fg_fraction`` of the image); a disc of area ``A`` is exactly the ``A`` pixels nearest to a random
sub-pixel centre, so the foreground count is controlled to the pixel even for ``A = 1``. Intensity
is ``label + N(0, sigma^2)``. A fraction of the images can be empty (no object). All randomness
comes from one ``torch.Generator``: the same seed gives the same tensors, whatever else runs.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor


class SyntheticBatch(NamedTuple):
    """``images`` (N, 1, *shape) float32 and ``masks`` (N, *shape) int64 labels in {0, 1}."""

    images: Tensor
    masks: Tensor


def object_masks(count: int, shape: Sequence[int], area: int, *, objects: int = 1, empty_fraction: float = 0.0,
                 generator: torch.Generator) -> Tensor:
    """``(count, *shape)`` int64 masks: ``objects`` discs (balls in 3-D) of ``area // objects`` pixels each
    per image (overlaps merge), and ``round(empty_fraction * count)`` randomly chosen empty images."""
    shape = tuple(int(s) for s in shape)
    pixels = math.prod(shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be 2-D or 3-D, got {shape}")
    if objects < 1 or area < objects or area > pixels:
        raise ValueError(f"need 1 <= objects <= area <= {pixels} pixels, got objects={objects}, area={area}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must lie in [0, 1], got {empty_fraction}")
    per_object = area // objects
    # Radius of a disc / ball of per_object pixels: keeps the centre far enough from the border.
    radius = math.sqrt(per_object / math.pi) if len(shape) == 2 else (3 * per_object / (4 * math.pi)) ** (1 / 3)
    grid = torch.stack(torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in shape), indexing="ij"), -1)
    masks = torch.zeros((count, *shape), dtype=torch.int64)
    empty = torch.zeros(count, dtype=torch.bool)
    empty[torch.randperm(count, generator=generator)[: round(empty_fraction * count)]] = True
    for n in range(count):
        for _ in range(objects):
            low = torch.tensor([min(radius, s / 2) for s in shape], dtype=torch.float64)
            high = torch.tensor(shape, dtype=torch.float64) - 1 - low
            centre = low + (high - low).clamp_min(0) * torch.rand(len(shape), generator=generator, dtype=torch.float64)
            if empty[n]:
                continue  # draw the centre anyway so the stream of random numbers does not depend on emptiness
            distance = ((grid - centre) ** 2).sum(-1).flatten()
            nearest = torch.argsort(distance, stable=True)[:per_object]
            masks[n].view(-1)[nearest] = 1
    return masks


def make_batch(count: int, shape: Sequence[int] = (128, 128), *, fg_fraction: Optional[float] = None,
               area: Optional[int] = None, objects: int = 1, sigma: float = 0.5, empty_fraction: float = 0.0,
               generator: torch.Generator) -> SyntheticBatch:
    """Noisy images and their masks; give the object size as ``fg_fraction`` of the image or ``area`` pixels."""
    if (fg_fraction is None) == (area is None):
        raise ValueError("give exactly one of fg_fraction and area")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if area is None:
        area = max(objects, round(fg_fraction * math.prod(shape)))
    masks = object_masks(count, shape, area, objects=objects, empty_fraction=empty_fraction, generator=generator)
    noise = torch.randn(masks.shape, generator=generator, dtype=torch.float32)
    images = (masks.float() + sigma * noise).unsqueeze(1)
    return SyntheticBatch(images, masks)


def generator_for(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and a stream id (train/test, setting index), independent of the global RNG."""
    value = int(seed)
    for part in stream:
        value = (value * 1_000_003 + int(part) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)
