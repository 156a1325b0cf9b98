"""dice_impls: one soft Dice semantics (``DiceSpec``) and several implementations of it."""

from . import fused, metrics  # importing fused registers IMPLEMENTATIONS["fused"]
from .audit import audit  # the function; its package is dice_impls.audit in sys.modules
from .compound import DiceCELoss, DiceFocalLoss
from .module import DiceLoss
from .registry import IMPLEMENTATIONS, Implementation, dice_loss, dice_statistics, get_implementation, register
from .score import DiceStatistics, loss_from_statistics
from .spec import PRESETS, DiceSpec

__all__ = [
    "DiceCELoss", "DiceFocalLoss", "DiceLoss", "DiceSpec", "DiceStatistics", "IMPLEMENTATIONS",
    "Implementation", "PRESETS", "dice_loss", "dice_statistics", "get_implementation",
    "loss_from_statistics", "metrics", "register", "audit",
]
