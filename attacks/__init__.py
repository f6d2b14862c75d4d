"""torchattacks-conforming attacks (installed as ``sdo_adv.attacks``)."""
from .generate import SDOGenerate
from .sdo import AttackResult, AttackStep, SDOAttack
from .universal import UniversalSDO

__all__ = ["AttackResult", "AttackStep", "SDOAttack", "SDOGenerate", "UniversalSDO"]
