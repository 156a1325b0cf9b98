"""Shared training and evaluation for the experiments: the toy models, the losses by name, the loop.

The task is binary segmentation with one sigmoid output channel. Two models:

Both have ``prepare(images)`` (the fixed input features, computed once) and ``forward(inputs)``.

* ``logistic``: a per-pixel logistic regression on two features, the pixel's intensity and its
  3x3 (3x3x3) mean: ``logit = w1 x + w2 mean(x) + b``, initialised at zero (``p = 0.5``). It has the
  decision problem of the toy setting with no optimisation noise, and is cheap enough for sweeps.
* ``cnn``: three 3x3 convolutions with 16 channels and ReLU, then a 1x1 convolution.

Losses are named (``LOSSES``) and built on ``dice_impls``, so every experiment exercises the Dice
implementation named by its ``impl``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dice_impls import DiceCELoss, DiceFocalLoss, DiceSpec, dice_loss, metrics
from dice_impls.compound import focal_loss

LOSSES = ("ce", "wce", "focal", "dice", "dice_ce", "dice_focal")
FOCAL_GAMMA, FOCAL_ALPHA = 2.0, 0.25  # Lin et al. 2017 defaults


def features(images: Tensor) -> Tensor:
    """``(N, 2, *spatial)``: the intensity and its local 3x3 (3x3x3) mean."""
    pool = F.avg_pool2d if images.ndim == 4 else F.avg_pool3d
    return torch.cat([images, pool(images, 3, stride=1, padding=1, count_include_pad=False)], 1)


class LogisticModel(nn.Module):
    def __init__(self, ndim: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.linear = conv(2, 1, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @staticmethod
    def prepare(images: Tensor) -> Tensor:
        return features(images)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.linear(inputs)


class TinyCNN(nn.Module):
    def __init__(self, ndim: int = 2, width: int = 16, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.layers = nn.Sequential(conv(1, width, 3, padding=1), nn.ReLU(), conv(width, width, 3, padding=1),
                                    nn.ReLU(), conv(width, width, 3, padding=1), nn.ReLU(), conv(width, 1, 1))
        with torch.no_grad():  # seeded initialisation, independent of the global RNG
            for layer in self.layers:
                if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
                    bound = 1 / math.sqrt(layer.weight[0].numel())
                    layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
                    layer.bias.zero_()

    @staticmethod
    def prepare(images: Tensor) -> Tensor:
        return images

    def forward(self, inputs: Tensor) -> Tensor:
        return self.layers(inputs)


def make_model(name: str, ndim: int = 2, generator: Optional[torch.Generator] = None) -> nn.Module:
    if name == "logistic":
        return LogisticModel(ndim)
    if name == "cnn":
        return TinyCNN(ndim, generator=generator)
    raise ValueError(f"unknown model {name!r}; choose 'logistic' or 'cnn'")


def make_loss(name: str, *, impl: str = "vectorized", spec: Optional[DiceSpec] = None,
              fg_fraction: Optional[float] = None) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss ``name`` (``LOSSES``) as ``loss(logits (N,1,...), masks (N,...))``.

    ``spec`` is the Dice spec (default: sigmoid, per-image, smooth 1e-5); ``wce`` weights the
    foreground by ``1 - fg_fraction`` and the background by ``fg_fraction`` (balanced classes).
    """
    spec = spec or DiceSpec(activation="sigmoid")
    if name == "ce":
        return lambda logits, masks: focal_loss(logits, masks, spec, gamma=0.0)
    if name == "wce":
        if fg_fraction is None:
            raise ValueError("wce needs the training set's fg_fraction")
        return lambda logits, masks: focal_loss(logits, masks, spec, gamma=0.0, alpha=1 - fg_fraction)
    if name == "focal":
        return lambda logits, masks: focal_loss(logits, masks, spec, gamma=FOCAL_GAMMA, alpha=FOCAL_ALPHA)
    if name == "dice":
        return lambda logits, masks: dice_loss(logits, masks, spec, impl=impl)
    if name == "dice_ce":
        return DiceCELoss(impl, spec)
    if name == "dice_focal":
        return DiceFocalLoss(impl, spec, gamma=FOCAL_GAMMA, alpha=FOCAL_ALPHA)
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")


def train(model: nn.Module, images: Tensor, masks: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], *,
          steps: int, lr: float, optimizer: str = "adam", log_every: int = 0,
          log: Optional[Callable[[int, Tensor, Tensor, nn.Module], None]] = None) -> nn.Module:
    """Full-batch training for ``steps`` steps; ``log(step, loss, logits, model)`` after the backward
    pass of step 0, every ``log_every`` steps and the last step (parameter gradients are available)."""
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adam' or 'sgd'")
    inputs = model.prepare(images)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = loss_fn(logits, masks)
        loss.backward()
        if log is not None and log_every and (step % log_every == 0 or step == steps - 1):
            log(step, loss.detach(), logits.detach(), model)
        opt.step()
    return model


def predict(model: nn.Module, images: Tensor) -> Tensor:
    """The model's logits on ``images``, without autograd."""
    with torch.no_grad():
        return model(model.prepare(images))


def gradient_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))


def evaluate(logits: Tensor, masks: Tensor, *, bins: int = 15) -> Dict[str, float]:
    """Recall, precision, hard DSC, PR-AUC (average precision), expected calibration error, mean |logit|,
    the fraction of pixels with 0.01 < p < 0.99, false-positive pixels per image, and the mean
    negative log-likelihood (binary cross-entropy) of the probabilities."""
    logits = logits.detach().double()
    probs = torch.sigmoid(logits)
    pred = (probs[:, 0] > 0.5).long()
    recall = float(metrics.recall(pred, masks, 2)[1])
    precision = float(metrics.precision(pred, masks, 2, empty_value=0.0)[1])
    dsc = float(metrics.dice(pred, masks, 2)[1])
    fp = float(((pred == 1) & (masks == 0)).sum()) / masks.shape[0]
    return dict(
        recall=recall, precision=precision, dsc=dsc, pr_auc=average_precision(probs.flatten(), masks.flatten()),
        ece=calibration_error(probs.flatten(), masks.flatten(), bins), logit_scale=float(logits.abs().mean()),
        unsaturated=float(((probs > 0.01) & (probs < 0.99)).double().mean()), fp_per_image=fp,
        nll=float(F.binary_cross_entropy_with_logits(logits[:, 0], masks.double())),
    )


def average_precision(scores: Tensor, labels: Tensor) -> float:
    """Area under the precision-recall curve as average precision: mean precision at each positive
    (ties broken by a stable sort, so the value is deterministic). NaN with no positive."""
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    hits = labels[order].double()
    precision_at = hits.cumsum(0) / torch.arange(1, hits.numel() + 1, dtype=torch.float64)
    return float((precision_at * hits).sum() / positives)


def calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """Expected calibration error of the foreground probability: sum over equal-width bins of
    (bin share) * |mean p - foreground rate|."""
    index = (probs * bins).long().clamp_max(bins - 1)
    mean_p = torch.bincount(index, weights=probs.double(), minlength=bins)
    rate = torch.bincount(index, weights=labels.double(), minlength=bins)
    return float((mean_p - rate).abs().sum() / probs.numel())
