"""torchattacks-conforming attacks (installed as ``sdo_adv.attacks``)."""
from .sdo import AttackResult, SDOAttack

__all__ = ["AttackResult", "SDOAttack"]
