import torch

import dice_impls


def test_every_implementation_matches_reference_on_default_spec():
    logits = torch.randn(2, 3, 9, 7)
    labels = torch.randint(0, 3, (2, 9, 7))
    expected = dice_impls.dice_loss(logits, labels, impl="reference")
    for name in dice_impls.IMPLEMENTATIONS:
        assert torch.allclose(dice_impls.dice_loss(logits, labels, impl=name).double(), expected, rtol=1e-5)
