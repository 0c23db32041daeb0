"""attacks/: adversarial attacks (upper estimates of the robustness radius) and their evaluation.

Public API: the attack classes (:class:`FGSM`, :class:`FGM`, :class:`PGD`, :class:`CW`,
:class:`DI2FGSM`, :class:`BoundaryAttack`, :class:`EOT`, :class:`APGD`, :class:`APGDT`,
:class:`Square`, :class:`FAB`, :class:`FABT`, :class:`AutoAttack`), :class:`LpBall`,
:class:`AttackResult`, :func:`minimal_eps`, :func:`evaluate`, :func:`with_solver` and
:data:`ATTACKS`, the CLI name -> class map.
"""

from __future__ import annotations

from ._checks import CheckResult as CheckResult
from ._solver import with_solver as with_solver
from .apgd import APGD as APGD
from .apgd import APGDT as APGDT
from .autoattack import AutoAttack as AutoAttack
from .base import Attack as Attack
from .base import AttackError as AttackError
from .base import AttackResult as AttackResult
from .boundary import BoundaryAttack as BoundaryAttack
from .cw import CW as CW
from .di2fgsm import DI2FGSM as DI2FGSM
from .eot import EOT as EOT
from .evaluate import EvalReport as EvalReport
from .evaluate import evaluate as evaluate
from .fab import FAB as FAB
from .fab import FABT as FABT
from .fgsm import FGM as FGM
from .fgsm import FGSM as FGSM
from .minimal_eps import MinEpsResult as MinEpsResult
from .minimal_eps import minimal_eps as minimal_eps
from .norms import NORMS as NORMS
from .norms import LpBall as LpBall
from .norms import UnknownNormError as UnknownNormError
from .pgd import PGD as PGD
from .square import Square as Square

#: CLI name -> attack class.
ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "fgm": FGM,
    "pgd": PGD,
    "cw": CW,
    "di2fgsm": DI2FGSM,
    "boundary": BoundaryAttack,
    "apgd": APGD,
    "apgd-t": APGDT,
    "square": Square,
    "fab": FAB,
    "fab-t": FABT,
    "autoattack": AutoAttack,
}

__all__ = [
    "APGD", "APGDT", "ATTACKS", "CW", "DI2FGSM", "EOT", "FGM", "FGSM", "NORMS", "PGD", "Attack", "AttackError",
    "AutoAttack", "FAB", "FABT", "Square",
    "AttackResult", "BoundaryAttack", "CheckResult", "EvalReport", "LpBall", "MinEpsResult",
    "UnknownNormError", "evaluate", "minimal_eps", "with_solver",
]
