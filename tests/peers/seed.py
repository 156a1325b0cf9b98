"""The seed document's ``Dice_loss``, verbatim.

Source: the blog post "常用损失函数(二):Dice Loss" (CV技术指南, 2022-07-30), section 4. The scraped
text lost its indentation; it is restored here and nothing else is changed (the one-axis resize
test ``h != ht and w != wt`` is the seed's, bug included).

``seed_target`` builds the (N, H, W, C + 1) one-hot target the way the seed's training code does:
``np.eye(C + 1)[labels]`` with every label >= C mapped to C, the extra last channel that ``Dice_loss``
drops.
"""

import numpy as np
import torch
import torch.nn.functional as F


def Dice_loss(inputs, target, beta=1, smooth = 1e-5):
    n, c, h, w = inputs.size()
    nt, ht, wt, ct = target.size()
    if h != ht and w != wt:
        inputs = F.interpolate(inputs, size=(ht, wt), mode="bilinear", align_corners=True)
    temp_inputs = torch.softmax(inputs.transpose(1, 2).transpose(2, 3).contiguous().view(n, -1, c),-1)
    temp_target = target.view(n, -1, ct)
    #--------------------------------------------#
    # 计算dice loss
    #--------------------------------------------#
    tp = torch.sum(temp_target[...,:-1] * temp_inputs, axis=[0,1])
    fp = torch.sum(temp_inputs , axis=[0,1]) - tp
    fn = torch.sum(temp_target[...,:-1] , axis=[0,1]) - tp
    score = ((1 + beta ** 2) * tp + smooth) / ((1 + beta ** 2) * tp + beta ** 2 * fn + fp + smooth)
    dice_loss = 1 - torch.mean(score)
    return dice_loss


def seed_target(labels: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """(N, H, W) integer labels -> (N, H, W, C + 1) one-hot, labels >= C in the extra last channel."""
    seg = labels.numpy().copy()
    seg[seg >= num_classes] = num_classes
    return torch.from_numpy(np.eye(num_classes + 1)[seg]).to(dtype)
