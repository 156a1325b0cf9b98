"""Seeded synthetic segmentation data with a known generator: noisy discs (or balls) on a background.

An object of area ``A`` is a fixed *shape* stamped at an integer position: the ``A`` grid points
nearest to a sub-pixel offset ``o`` inside one pixel (``o`` on a ``subpixel`` grid per axis,
``(k + 1/2) / subpixel``; ties broken by the points' lexicographic order), so the foreground count
is exact to the pixel even for ``A = 1`` and the disc boundary still moves in sub-pixel steps.
A *placement* is an (offset, position) pair whose stamp lies wholly inside the image; each image
draws its placement uniformly from the finite set :func:`placements` lists. That finite prior is
what lets :mod:`analysis.bayes` compute the exact posterior. Intensity is ``label + N(0, sigma^2)``;
a chosen share of the images can be empty. Multi-class data (:func:`make_multiclass_batch`) show
one disc per foreground class, each in its own input channel.

All randomness comes from one ``torch.Generator``: the same seed gives the same tensors.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

SUBPIXEL = {2: 4, 3: 2}  # sub-pixel offsets per axis: 16 disc shapes in 2-D, 8 ball shapes in 3-D


class SyntheticBatch(NamedTuple):
    """``images`` (N, channels, *shape) float32 and ``masks`` (N, *shape) int64 labels."""

    images: Tensor
    masks: Tensor


class Shape(NamedTuple):
    """Points of one object relative to its integer anchor: ``points`` (A, ndim) int64, all >= 0,
    inside the bounding box ``extent`` (per axis)."""

    points: Tensor
    extent: Tuple[int, ...]


@lru_cache(maxsize=None)
def shapes(area: int, ndim: int, subpixel: Optional[int] = None) -> Tuple[Shape, ...]:
    """The object shapes of ``area`` pixels, one per sub-pixel offset (row-major over offsets)."""
    if ndim not in SUBPIXEL:
        raise ValueError(f"only 2-D and 3-D objects, got ndim={ndim}")
    if area < 1:
        raise ValueError(f"area must be >= 1 pixel, got {area}")
    subpixel = subpixel or SUBPIXEL[ndim]
    reach = math.ceil((area / (math.pi if ndim == 2 else 4 * math.pi / 3)) ** (1 / ndim)) + 2
    axis = torch.arange(-reach, reach + 1, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*([axis] * ndim), indexing="ij"), -1).reshape(-1, ndim)  # lexicographic order
    result = []
    for offset in itertools.product(*([[(k + 0.5) / subpixel for k in range(subpixel)]] * ndim)):
        distance = ((grid - torch.tensor(offset, dtype=torch.float64)) ** 2).sum(-1)
        chosen = grid[torch.argsort(distance, stable=True)[:area]].long()
        low = chosen.min(0).values
        points = chosen - low
        result.append(Shape(points, tuple(int(e) + 1 for e in points.max(0).values)))
    return tuple(result)


def placements(shape: Sequence[int], area: int) -> List[Tuple[int, Tuple[int, ...]]]:
    """Every placement of an ``area``-pixel object in an image of ``shape``: ``(shape index,
    number of valid anchors per axis)``; anchor ``j`` on an axis is valid for ``0 <= j < count``."""
    shape = tuple(int(s) for s in shape)
    result = []
    for index, obj in enumerate(shapes(area, len(shape))):
        counts = tuple(s - e + 1 for s, e in zip(shape, obj.extent))
        if min(counts) < 1:
            raise ValueError(f"an object of {area} pixels does not fit in an image of {shape}")
        result.append((index, counts))
    return result


def stamp(mask: Tensor, obj: Shape, anchor: Sequence[int], value: int = 1) -> None:
    """Set the pixels of ``obj`` at integer ``anchor`` in the (*shape) ``mask`` to ``value``, in place."""
    coords = obj.points + torch.tensor(anchor, dtype=torch.int64)
    mask[tuple(coords.T)] = value


def object_masks(count: int, shape: Sequence[int], area: int, *, objects: int = 1, empty_fraction: float = 0.0,
                 generator: torch.Generator) -> Tensor:
    """``(count, *shape)`` int64 masks: ``objects`` objects of ``area // objects`` pixels each per image,
    each at a uniformly drawn placement (overlaps merge), and ``round(empty_fraction * count)``
    randomly chosen empty images."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be 2-D or 3-D, got {shape}")
    if objects < 1 or area < objects or area > math.prod(shape):
        raise ValueError(f"need 1 <= objects <= area <= {math.prod(shape)} pixels, got objects={objects}, area={area}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must lie in [0, 1], got {empty_fraction}")
    per_object = area // objects
    options = placements(shape, per_object)
    sizes = torch.tensor([math.prod(counts) for _, counts in options], dtype=torch.float64)
    objs = shapes(per_object, len(shape))
    masks = torch.zeros((count, *shape), dtype=torch.int64)
    empty = torch.zeros(count, dtype=torch.bool)
    empty[torch.randperm(count, generator=generator)[: round(empty_fraction * count)]] = True
    for n in range(count):
        for _ in range(objects):
            # Uniform over all placements: a shape with probability proportional to its anchor count.
            index = int(torch.multinomial(sizes, 1, generator=generator))
            counts = options[index][1]
            anchor = [int(torch.randint(0, c, (1,), generator=generator)) for c in counts]
            if not empty[n]:  # drawn anyway, so the random stream does not depend on emptiness
                stamp(masks[n], objs[index], anchor)
    return masks


def object_area(shape: Sequence[int], fg_fraction: float, objects: int = 1) -> int:
    """The object area (pixels) giving foreground fraction ``fg_fraction`` of an image of ``shape``."""
    return max(objects, round(fg_fraction * math.prod(shape)))


def make_batch(count: int, shape: Sequence[int] = (32, 32), *, fg_fraction: Optional[float] = None,
               area: Optional[int] = None, objects: int = 1, sigma: float = 0.5, empty_fraction: float = 0.0,
               generator: torch.Generator) -> SyntheticBatch:
    """Noisy one-channel images and their binary masks; the object size is ``fg_fraction`` of the
    image or ``area`` pixels."""
    if (fg_fraction is None) == (area is None):
        raise ValueError("give exactly one of fg_fraction and area")
    _check_sigma(sigma)
    if area is None:
        area = object_area(shape, fg_fraction, objects)
    masks = object_masks(count, shape, area, objects=objects, empty_fraction=empty_fraction, generator=generator)
    noise = torch.randn(masks.shape, generator=generator, dtype=torch.float32)
    return SyntheticBatch((masks.float() + sigma * noise).unsqueeze(1), masks)


def make_multiclass_batch(count: int, shape: Sequence[int], areas: Sequence[int], *, sigma: float = 0.5,
                          generator: torch.Generator) -> SyntheticBatch:
    """``len(areas)`` foreground classes, one object of ``areas[k]`` pixels each per image, class
    ``k + 1`` drawn on top of the lower ones (label maps in ``0..K``). Input channel ``k`` shows
    class ``k + 1``'s whole object: ``object_k + N(0, sigma^2)``, so the channels are independent."""
    _check_sigma(sigma)
    objects = torch.stack([object_masks(count, shape, int(a), generator=generator) for a in areas], 1)
    labels = torch.zeros((count, *shape), dtype=torch.int64)
    for k in range(len(areas)):
        labels[objects[:, k] == 1] = k + 1
    noise = torch.randn(objects.shape, generator=generator, dtype=torch.float32)
    return SyntheticBatch(objects.float() + sigma * noise, labels)


def _check_sigma(sigma: float) -> None:
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")


def generator_for(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and a stream id (train/test, setting index), independent of the global RNG."""
    value = int(seed)
    for part in stream:
        value = (value * 1_000_003 + int(part) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)
