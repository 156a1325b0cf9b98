"""One training step of a small U-Net with each loss: what switching to the drop-in gains per step.

A step is what a training loop pays: the network's forward pass, the loss, the backward pass
through both, and an Adam update. The network is MONAI's ``BasicUNet`` with small features
(8, 8, 16, 32, 64, 8), one input channel and C output classes; the losses are MONAI's
``DiceLoss``/``DiceCELoss`` (softmax, one-hot labels) and their drop-ins from
``dice_impls.compat.monai`` with the same arguments. On the CPU the loss is a small part of a
step; the ratio says how small.
"""

from __future__ import annotations

import torch

from .common import TRAINING_SHAPES, check_supported, parse_shape, pin_threads, require

# "<library> <class>": MONAI's loss, or its drop-in from dice_impls.compat.monai ("drop-in").
LOSS_CLASSES = ("monai DiceLoss", "drop-in DiceLoss", "monai DiceCELoss", "drop-in DiceCELoss")
FEATURES = (8, 8, 16, 32, 64, 8)


def make_loss(name: str) -> torch.nn.Module:
    library, cls = name.split(" ")
    if library == "monai":
        import monai.losses as module
    else:
        import dice_impls.compat.monai as module
    return getattr(module, cls)(softmax=True, to_onehot_y=True)


class TrainingStep:
    params = (list(LOSS_CLASSES), TRAINING_SHAPES)
    param_names = ("implementation", "shape")
    rounds = 2
    repeat = (3, 5, 10.0)
    number = 1
    warmup_time = 0.0

    def setup(self, loss: str, shape: str):
        from monai.networks.nets import BasicUNet

        check_supported("fused", shape, "float32")  # the drop-ins' fast path
        require(loss in LOSS_CLASSES, f"unknown loss {loss!r}")
        pin_threads()
        n, classes, *spatial = parse_shape(shape)
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.net = BasicUNet(spatial_dims=len(spatial), in_channels=1, out_channels=classes, features=FEATURES)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.loss = make_loss(loss)
        self.images = torch.randn(n, 1, *spatial, generator=generator)
        self.labels = torch.randint(0, classes, (n, 1, *spatial), generator=generator)
        self.step()  # first-call allocations and caches stay out of the timing

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.net(self.images), self.labels).backward()
        self.optimizer.step()

    def time_step(self, *params):
        self.step()
