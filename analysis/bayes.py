"""The Bayes-optimal posterior of the synthetic generator (:mod:`analysis.synthetic`), exactly.

The generator is known: an image holds one object at a placement drawn uniformly from a finite
set (or, with probability ``empty_fraction``, none), and every pixel shows ``label + N(0, sigma^2)``
independently. Given the image ``x``, the likelihood ratio of placement ``c`` against "no object"
is ``exp(sum over the object's pixels of llr_i)`` with the per-pixel log-likelihood ratio
``llr_i = log N(x_i; 1, sigma^2) / N(x_i; 0, sigma^2) = (x_i - 1/2) / sigma^2``. So the posterior
over placements is a softmax of these sums (one correlation of the ``llr`` map with each object
shape), and a pixel's foreground probability is the posterior mass of the placements covering it
(the transposed correlation), times the posterior probability that the image is not empty. This
is exact, not a Monte-Carlo estimate, because the prior over shapes is a finite uniform set that
is enumerated; nothing is approximated but float64 rounding.

Multi-class data have one object per class, each seen in its own channel, so the objects are
independent given the image: ``P(label = k) = q_k * prod_{j > k} (1 - q_j)`` with ``q_k`` the
binary posterior of channel ``k`` (class ``k + 1`` is drawn on top of the lower ones).

No segmentation can beat this posterior's expected negative log-likelihood; its best-threshold
F1 is the reference "Bayes DSC" the trained models are measured against.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .synthetic import placements, shapes


def posterior(images: Tensor, area: int, sigma: float, empty_fraction: float = 0.0) -> Tuple[Tensor, Tensor]:
    """``(p_fg, p_object)``: the exact foreground probability per pixel, ``(N, *shape)`` float64, and
    the probability that each image holds its object, ``(N,)``, for one-object images
    ``images`` (N, 1, *shape) of an ``area``-pixel object."""
    if sigma <= 0:
        raise ValueError(f"the posterior needs noise, sigma > 0; got {sigma}")
    if not 0.0 <= empty_fraction < 1.0:
        raise ValueError(f"empty_fraction must lie in [0, 1), got {empty_fraction}")
    if images.ndim not in (4, 5) or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, *shape) with a 2-D or 3-D shape, got {tuple(images.shape)}")
    spatial = tuple(images.shape[2:])
    ndim = len(spatial)
    conv, conv_transpose = (F.conv2d, F.conv_transpose2d) if ndim == 2 else (F.conv3d, F.conv_transpose3d)
    llr = (images.double() - 0.5) / sigma**2
    kernels, scores = [], []
    for index, counts in placements(spatial, area):
        obj = shapes(area, ndim)[index]
        kernel = torch.zeros((1, 1, *obj.extent), dtype=torch.float64)
        kernel[(0, 0, *obj.points.T)] = 1.0
        kernels.append(kernel)
        scores.append(conv(llr, kernel))  # (N, 1, *counts): summed llr of each anchor's object
    flat = torch.cat([s.flatten(1) for s in scores], 1)
    peak = flat.max(1).values
    weights = [torch.exp(s - peak.view(-1, *([1] * (ndim + 1)))) for s in scores]
    total = torch.stack([w.flatten(1).sum(1) for w in weights]).sum(0)  # sum of exp(score - peak) per image
    covered = sum(conv_transpose(w, k) for w, k in zip(weights, kernels))[:, 0] / total.view(-1, *([1] * ndim))
    # log Z_object = log mean over placements of exp(score): the evidence for "an object" vs "empty".
    log_evidence = peak + torch.log(total) - math.log(flat.shape[1])
    if empty_fraction == 0.0:
        p_object = torch.ones_like(log_evidence)
    else:
        p_object = torch.sigmoid(log_evidence + math.log((1 - empty_fraction) / empty_fraction))
    return covered * p_object.view(-1, *([1] * ndim)), p_object


def multiclass_posterior(images: Tensor, areas: Sequence[int], sigma: float) -> Tensor:
    """``(N, K + 1, *shape)`` float64 class probabilities for :func:`analysis.synthetic.make_multiclass_batch`
    data (channel ``k`` shows class ``k + 1``'s object)."""
    if images.shape[1] != len(areas):
        raise ValueError(f"need one image channel per class area, got {images.shape[1]} channels and {len(areas)} areas")
    q = [posterior(images[:, k : k + 1], int(a), sigma)[0] for k, a in enumerate(areas)]
    probs, above = [], torch.ones_like(q[0])
    for k in reversed(range(len(areas))):  # higher classes are drawn on top
        probs.append(q[k] * above)
        above = above * (1 - q[k])
    return torch.stack([above, *reversed(probs)], 1)
