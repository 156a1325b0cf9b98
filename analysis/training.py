"""The learned model, the losses by name, and honest training: mini-batches, a validation split,
a fixed-budget checkpoint and one selected by a loss-independent stopping rule.

Model (:class:`UNet`): a 2-level U-Net (two 3x3 convolutions per level, max-pool down, nearest
up, skip connections) with ``width`` channels at full resolution. Its bottleneck also sees the
image-wide maximum of its own features, so every output pixel can tell whether *anything* in the
image looks like an object: the receptive field is the whole image, larger than any object,
which a model needs to leave an empty image empty.

Losses (:data:`LOSSES`) are all built from ``dice_impls`` (``DiceSpec`` fields, the compound
losses, its focal/CE term); see :func:`make_loss` for each definition and docs/experiments.md.

Training (:func:`fit`): Adam (or SGD) on mini-batches drawn without replacement from a fixed
training split, one seeded permutation per epoch. Every ``eval_every`` steps the validation split
is scored (loss, DSC at 1/2, DSC at its best threshold, and the saturation probe of
:mod:`analysis.evaluation`). The stopping rule is the same for every loss, because it reads the
validation **DSC at its best threshold** (``val_dsc_best``), not the loss, nor the DSC at 1/2,
which stays at 0 while a CE model still ranks pixels better every step without yet putting any
above 1/2: the selected checkpoint is the evaluation with the best such DSC (an improvement must
exceed ``min_delta``), never step 0; with ``schedule="plateau"`` the run stops when ``patience`` evaluations *after the
warm-up* (``plateau_warmup`` steps) bring no improvement (``stopped_by="plateau"``), or at
``max_steps`` (``"cap"``); ``"constant"`` and ``"cosine"`` (learning rate decayed to 0) run
exactly ``max_steps`` (``"schedule"``); a non-finite training loss stops it (``"diverged"``). At
the end :func:`collapse_state` says whether the run is stuck in a saturated state (one class
everywhere, parameter gradient < 1e-9). The ``budget`` checkpoint is the model after exactly
``budget_steps`` steps, what a study with one short fixed schedule would report. Options for the
saturation experiment: a linear learning-rate warm-up, gradient-norm clipping, and a per-step
trace (mini-batch mean logit, predicted-foreground share, gradient norm).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dice_impls import DiceCELoss, DiceFocalLoss, DiceSpec, dice_loss
from dice_impls.compound import focal_loss

from .evaluation import best_dsc, f1_counts, multiclass_metrics, probabilities
from .synthetic import SyntheticBatch

LOSSES = ("ce", "wce", "focal", "dice", "dice_squared", "log_dice", "gen_dice", "tversky", "focal_tversky", "dice_ce",
          "dice_focal")
FOCAL_GAMMA = 2.0  # Lin et al. 2017; no alpha (the class weighting is wce's job)
TVERSKY = dict(fp_weight=0.3, fn_weight=0.7)  # Salehi et al. 2017
FOCAL_TVERSKY_GAMMA = 0.75  # Abraham & Khan 2019: (1 - TI)^(1/gamma) with gamma = 4/3
DICE_LOSSES = ("dice", "dice_squared", "log_dice", "gen_dice", "tversky", "focal_tversky", "dice_ce", "dice_focal")


class UNet(nn.Module):
    """2-level U-Net with a global-context bottleneck, for ``ndim``-D images (see the module docstring)."""

    def __init__(self, ndim: int = 2, in_channels: int = 1, out_channels: int = 1, width: int = 8,
                 generator: Optional[torch.Generator] = None, layers: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        w = width

        def block(cin: int, cout: int, layers: int = 2) -> nn.Sequential:
            mods: List[nn.Module] = []
            for i in range(layers):
                mods += [conv(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU()]
            return nn.Sequential(*mods)

        self.ndim = ndim
        self.enc1, self.enc2 = block(in_channels, w, layers), block(w, 2 * w, layers)
        self.bottleneck = block(4 * w, 2 * w, layers)  # its features and their image-wide maximum
        self.dec2 = block(4 * w, w, 1)
        self.dec1 = nn.Sequential(block(2 * w, w, 1), conv(w, out_channels, 1))
        with torch.no_grad():  # seeded He-uniform initialisation, independent of the global RNG
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                    bound = math.sqrt(6 / module.weight[0].numel())
                    module.weight.copy_((torch.rand(module.weight.shape, generator=generator) * 2 - 1) * bound)
                    module.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        for size in x.shape[2:]:
            if size % 4:
                raise ValueError(f"UNet needs spatial sizes divisible by 4, got {tuple(x.shape[2:])}")
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        skip1 = self.enc1(x)
        skip2 = self.enc2(pool(skip1, 2))
        low = pool(skip2, 2)
        context = low.amax(dim=tuple(range(2, low.ndim)), keepdim=True).expand_as(low)
        low = self.bottleneck(torch.cat([low, context], 1))
        up = self.dec2(torch.cat([F.interpolate(low, scale_factor=2.0), skip2], 1))
        return self.dec1(torch.cat([F.interpolate(up, scale_factor=2.0), skip1], 1))


def class_weights(frequencies: Sequence[float]) -> Tensor:
    """Weighted CE's class weights: ``1 / sqrt(frequency)``, normalised to mean 1 over the classes.

    Half-way (on a log scale) between no weighting and full balancing (``1 / frequency``), which
    at rho = 0.1 % would weight a foreground pixel 1000x and trade most of the precision away.
    """
    f = torch.tensor([max(float(x), 1e-12) for x in frequencies], dtype=torch.float64)
    w = f.rsqrt()
    return w / w.mean()


def make_loss(name: str, *, classes: int = 1, impl: str = "vectorized", smooth: float = 1e-5, batch: bool = False,
              frequencies: Optional[Sequence[float]] = None) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss ``name`` (:data:`LOSSES`) as ``loss(logits (N, C, ...), labels (N, ...))``.

    ``classes == 1``: one sigmoid channel (binary); otherwise softmax over ``classes`` channels
    with the Dice terms over the foreground classes (nnU-Net's convention), except generalized
    Dice, which includes the background with weights ``1 / G_c^2`` (Sudre et al. 2017); the binary
    generalized Dice scores the two classes of the softmax of ``(0, z)``, which is ``sigmoid(z)``.
    ``smooth`` and ``batch`` set the Dice terms' smoothing and per-image / batch reduction;
    ``frequencies`` (the classes' pixel shares, background first) set ``wce``'s weights.
    """
    binary = classes == 1
    spec = DiceSpec(activation="sigmoid" if binary else "softmax", smooth_nr=smooth, smooth_dr=smooth, batch=batch,
                    include_background=binary)
    if name == "ce":
        return lambda logits, labels: focal_loss(logits, labels, spec, gamma=0.0)
    if name == "wce":
        if frequencies is None:
            raise ValueError("wce needs the classes' frequencies")
        weights = class_weights(frequencies)
        if binary:
            alpha = float(weights[1] / weights.sum())
            return lambda logits, labels: focal_loss(logits, labels, spec, gamma=0.0, alpha=alpha)
        return lambda logits, labels: F.cross_entropy(logits, labels, weight=weights.to(logits.dtype))
    if name == "focal":
        return lambda logits, labels: focal_loss(logits, labels, spec, gamma=FOCAL_GAMMA)
    if name == "dice_ce":
        return DiceCELoss(impl, spec)
    if name == "dice_focal":
        return DiceFocalLoss(impl, spec, gamma=FOCAL_GAMMA)
    variants = dict(dice={}, dice_squared=dict(squared=True), log_dice=dict(log_loss=True), tversky=TVERSKY,
                    focal_tversky=dict(TVERSKY, focal_gamma=FOCAL_TVERSKY_GAMMA),
                    gen_dice=dict(generalized="square", include_background=True))
    if name not in variants:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
    dice_spec = spec.replace(**variants[name])
    if name == "gen_dice" and binary:
        dice_spec = dice_spec.replace(activation="softmax")
        return lambda logits, labels: dice_loss(torch.cat([torch.zeros_like(logits), logits], 1), labels, dice_spec,
                                                impl=impl)
    return lambda logits, labels: dice_loss(logits, labels, dice_spec, impl=impl)


STOP_REASONS = ("plateau", "cap", "schedule", "diverged")
SCHEDULES = ("plateau", "constant", "cosine")
COLLAPSE_GRAD_NORM = 1e-9  # a parameter-gradient norm below this is "no gradient" (a saturated run gets exactly 0)


@dataclass
class FitResult:
    """What :func:`fit` returns: the budget and the selected checkpoints, how the run ended, whether
    it collapsed, and the validation trajectory (and, with ``trace``, one point per step)."""

    budget_state: Dict[str, Tensor]
    selected_state: Dict[str, Tensor]
    selected_step: int  # the evaluation step (never 0) with the best validation DSC
    steps: int  # steps run
    stopped_by: str  # one of STOP_REASONS
    collapsed: bool  # at the end: one class predicted everywhere and no parameter gradient (see collapse_state)
    final_fg_share: float  # at the end: share of validation pixels predicted foreground
    final_grad_norm: float  # at the end: parameter-gradient norm of the loss on the validation split
    initial_grad_norm: float  # parameter-gradient norm of the first mini-batch, at initialisation
    trajectory: List[dict] = field(default_factory=list)
    step_trace: List[dict] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return self.stopped_by == "diverged"


def fit(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], train: SyntheticBatch, val: SyntheticBatch, *,
        lr: float, generator: torch.Generator, optimizer: str = "adam", batch_size: int = 8, budget_steps: int = 100,
        max_steps: int = 1000, eval_every: int = 20, patience: int = 5, min_delta: float = 0.005,
        plateau_warmup: int = 100, schedule: str = "plateau", lr_warmup: int = 0, clip_norm: Optional[float] = None,
        probe: Optional[Callable[[Tensor, Tensor], dict]] = None, trace: bool = False) -> FitResult:
    """Train ``model`` in place (see the module docstring); ``probe(val_logits, val_loss_grad)``
    adds its measurements to each validation point; ``trace`` records every step's mini-batch
    mean logit, predicted-foreground share and parameter-gradient norm (before clipping)."""
    if not 0 < budget_steps <= max_steps:
        raise ValueError(f"need 0 < budget_steps <= max_steps, got {budget_steps} and {max_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if eval_every < 1 or patience < 1 or plateau_warmup < 0 or lr_warmup < 0:
        raise ValueError(f"need eval_every >= 1, patience >= 1, plateau_warmup >= 0 and lr_warmup >= 0, got "
                         f"{eval_every}, {patience}, {plateau_warmup} and {lr_warmup}")
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adam' or 'sgd'")
    count = train.images.shape[0]
    order: List[int] = []
    trajectory: List[dict] = []
    step_trace: List[dict] = []
    best_score, best_state, best_step, stale = -math.inf, None, 0, 0
    budget_state = None
    stopped_by = ""
    step, initial_grad_norm = 0, math.nan
    while True:
        if step % eval_every == 0 or step in (budget_steps, max_steps):
            point = validation_point(model, loss_fn, val, probe)
            point.update(step=step, grad_norm=_grad_norm(model) if step else math.nan)
            trajectory.append(point)
            if step > 0:  # the untrained network is never selected
                score = point["val_dsc_best"] if math.isfinite(point["val_dsc_best"]) else -math.inf
                if best_state is None or score > best_score + min_delta:
                    best_score, best_state, best_step, stale = score, copy.deepcopy(model.state_dict()), step, 0
                elif step > plateau_warmup and step % eval_every == 0:  # patience counts after the warm-up only
                    stale += 1
            if step == budget_steps:
                budget_state = copy.deepcopy(model.state_dict())
            if schedule == "plateau" and stale >= patience:
                stopped_by = "plateau"
                break
        if step >= max_steps:
            stopped_by = "cap" if schedule == "plateau" else "schedule"
            break
        if not order:
            order = torch.randperm(count, generator=generator).tolist()
        index, order = order[:batch_size], order[batch_size:]
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, max_steps, schedule, lr_warmup)
        opt.zero_grad(set_to_none=True)
        logits = model(train.images[index])
        loss = loss_fn(logits, train.masks[index]) if torch.isfinite(logits).all() else logits.new_tensor(math.nan)
        if not torch.isfinite(loss):
            stopped_by = "diverged"
            break
        loss.backward()
        grad_norm = _grad_norm(model)
        if step == 0:
            initial_grad_norm = grad_norm
        if trace:
            step_trace.append(dict(step=step, train_loss=float(loss.detach()), mean_logit=float(logits.detach().mean()),
                                   fg_share=predicted_foreground_share(logits.detach()), grad_norm=grad_norm))
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        step += 1
    if budget_state is None:  # stopped before the budget: the budget checkpoint is the last state
        budget_state = copy.deepcopy(model.state_dict())
    if best_state is None:  # diverged before the first evaluation after step 0
        best_state, best_step = copy.deepcopy(model.state_dict()), step
    final = collapse_state(model, loss_fn, val)
    return FitResult(budget_state, best_state, best_step, step, stopped_by, final["collapsed"], final["fg_share"],
                     final["grad_norm"], initial_grad_norm, trajectory, step_trace)


def _lr_factor(step: int, max_steps: int, schedule: str, lr_warmup: int) -> float:
    """The learning rate's multiplier at ``step``: a linear warm-up over ``lr_warmup`` steps, then
    constant, or a cosine decay to 0 at ``max_steps`` with ``schedule="cosine"``."""
    factor = min(1.0, (step + 1) / lr_warmup) if lr_warmup else 1.0
    if schedule == "cosine":
        factor *= 0.5 * (1 + math.cos(math.pi * step / max_steps))
    return factor


def predicted_foreground_share(logits: Tensor) -> float:
    """Share of pixels predicted foreground: sigmoid > 1/2 (one channel) or argmax not class 0."""
    if logits.shape[1] == 1:
        return float((logits > 0).double().mean())
    return float((logits.argmax(1) != 0).double().mean())


def collapse_state(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], data: SyntheticBatch) -> dict:
    """``fg_share`` (:func:`predicted_foreground_share` on ``data``), ``grad_norm`` (the parameter-gradient
    norm of ``loss_fn`` on ``data``; NaN when the loss is not finite) and ``collapsed``: one class
    predicted on every pixel **and** ``grad_norm < COLLAPSE_GRAD_NORM``, the absorbing saturated
    state (a network that predicts one class but still has a gradient is only untrained)."""
    params = [p for p in model.parameters() if p.requires_grad]
    logits = model(data.images)
    if not torch.isfinite(logits).all():  # diverged weights: the losses refuse such logits
        return dict(fg_share=math.nan, grad_norm=math.nan, collapsed=False)
    loss = loss_fn(logits, data.masks)
    share = predicted_foreground_share(logits.detach())
    if not torch.isfinite(loss):
        return dict(fg_share=share, grad_norm=math.nan, collapsed=False)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))
    return dict(fg_share=share, grad_norm=norm, collapsed=share in (0.0, 1.0) and norm < COLLAPSE_GRAD_NORM)


def set_prior_bias(model: UNet, foreground_share: float) -> None:
    """Set the binary output's bias to ``log(rho / (1 - rho))``, so that the untrained network
    predicts the foreground prior everywhere (the prior initialisation of Lin et al. 2017)."""
    if not 0 < foreground_share < 1:
        raise ValueError(f"foreground_share must lie strictly between 0 and 1, got {foreground_share}")
    with torch.no_grad():
        model.dec1[-1].bias.fill_(math.log(foreground_share / (1 - foreground_share)))


def validation_point(model: nn.Module, loss_fn, val: SyntheticBatch, probe=None) -> dict:
    """The loss and the DSC (at 1/2 and at the best threshold) on the validation split and, with
    ``probe``, its measurements of the logit gradient."""
    with torch.no_grad():
        logits = model(val.images)
    if not torch.isfinite(logits).all():  # diverged weights: the losses refuse such logits
        return dict(val_loss=math.nan, val_dsc=math.nan, val_dsc_best=math.nan)
    logits.requires_grad_(True)
    loss = loss_fn(logits, val.masks)
    point = dict(val_loss=float(loss.detach()), val_dsc=validation_dsc(logits.detach(), val.masks),
                 val_dsc_best=validation_best_dsc(logits.detach(), val.masks))
    if probe is not None and torch.isfinite(loss):
        (grad,) = torch.autograd.grad(loss, logits)
        point.update(probe(logits.detach(), grad))
    return point


def validation_dsc(logits: Tensor, labels: Tensor) -> float:
    """Pooled DSC at threshold 1/2 (one channel) or the foreground classes' mean DSC of the argmax."""
    if logits.shape[1] == 1:
        return f1_counts(torch.sigmoid(logits.double()[:, 0]) > 0.5, labels)["dsc"]
    return multiclass_metrics(logits, labels, logits.shape[1])["dsc"]


def validation_best_dsc(logits: Tensor, labels: Tensor) -> float:
    """The stopping rule's and the learning-rate choice's criterion: the pooled DSC at the best
    threshold of the foreground probability (one channel), or the foreground classes' mean of it
    over each class's probability (softmax)."""
    probs = probabilities(logits)
    return sum(best_dsc(probs[:, c], (labels == c).long()) for c in range(1, probs.shape[1])) / (probs.shape[1] - 1)


def predict(model: nn.Module, images: Tensor, chunk: int = 64) -> Tensor:
    """The model's logits on ``images`` (in chunks), without autograd."""
    with torch.no_grad():
        return torch.cat([model(images[i:i + chunk]) for i in range(0, images.shape[0], chunk)])


def _grad_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))
