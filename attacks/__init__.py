"""torchattacks-conforming attacks (installed as ``sdo_adv.attacks``)."""
from .sdo import AttackResult, AttackStep, SDOAttack

__all__ = ["AttackResult", "AttackStep", "SDOAttack"]
