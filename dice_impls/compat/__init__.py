"""Drop-in replacements for the peers' Dice losses: change one import, keep the call.

``dice_impls.compat.monai``, ``.nnunet`` and ``.smp`` have the peers' class names, arguments,
defaults and output shapes. Each class maps its arguments onto one ``DiceSpec`` and, per call,
dispatches to the fastest implementation that supports it (``dispatch.py``). docs/conventions.md
"Drop-in classes" has the argument mapping and every divergence, with the tests that prove them.
"""

from . import monai, nnunet, smp

__all__ = ["monai", "nnunet", "smp"]
