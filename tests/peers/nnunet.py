"""nnU-Net v2's Dice term, written out from its published source for conformance tests.

Reproduces ``nnunetv2.training.loss.dice.MemoryEfficientSoftDiceLoss`` (ddp=False) as
``nnUNetTrainer._build_loss`` configures it (``apply_nonlin=softmax_helper_dim1``, ``smooth=1e-5``,
``do_bg=False``, ``batch_dice`` from the plans: True for 2d, and for 3d_fullres when a 3d_lowres
stage exists) and fed by ``DC_and_CE_loss`` (ignored pixels relabelled 0 and passed as
``loss_mask``). Read from github.com/MIC-DKFZ/nnUNet (Apache-2.0), files
nnunetv2/training/loss/dice.py, nnunetv2/training/loss/compound_losses.py and
nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py at commit 017de4adbc55709423ac569c51191df8a6af7ee5.
nnU-Net does not install here; this module re-states its steps, it is not a copy of its code.
"""

from typing import Optional

import torch


def memory_efficient_soft_dice(x: torch.Tensor, y: torch.Tensor, *, batch_dice: bool, do_bg: bool = False,
                               smooth: float = 1e-5, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``MemoryEfficientSoftDiceLoss(softmax, batch_dice, do_bg, smooth)(x, y, loss_mask)``: ``-mean(dc)``.

    ``x``: logits (b, c, *spatial); ``y``: label map (b, 1, *spatial) or (b, *spatial);
    ``loss_mask``: (b, 1, *spatial), 1 on counted pixels.
    """
    x = torch.softmax(x, 1)
    if not do_bg:
        x = x[:, 1:]
    axes = tuple(range(2, x.ndim))
    with torch.no_grad():  # the one-hot target is built without autograd, as bool, by scatter
        if y.ndim != x.ndim:
            y = y.view(y.shape[0], 1, *y.shape[1:])
        onehot = torch.zeros((x.shape[0], x.shape[1] + (0 if do_bg else 1), *x.shape[2:]), dtype=torch.bool)
        onehot.scatter_(1, y.long(), 1)
        if not do_bg:
            onehot = onehot[:, 1:]
        sum_gt = onehot.sum(axes) if loss_mask is None else (onehot * loss_mask).sum(axes)
    intersect = (x * onehot).sum(axes) if loss_mask is None else (x * onehot * loss_mask).sum(axes)
    sum_pred = x.sum(axes) if loss_mask is None else (x * loss_mask).sum(axes)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dc = (2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, 1e-8)
    return -dc.mean()


def dc_and_ce_dice_term(x: torch.Tensor, target: torch.Tensor, *, batch_dice: bool,
                        ignore_label: Optional[int] = None) -> torch.Tensor:
    """The Dice part of ``DC_and_CE_loss(..., ignore_label)`` for a (b, 1, *spatial) label map."""
    if ignore_label is None:
        return memory_efficient_soft_dice(x, target, batch_dice=batch_dice)
    mask = target != ignore_label
    target_dice = torch.where(mask, target, 0)
    return memory_efficient_soft_dice(x, target_dice, batch_dice=batch_dice, loss_mask=mask.float())
