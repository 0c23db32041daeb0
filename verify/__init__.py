"""verify/: certified robustness bounds of classifiers built from layers and Neural ODE blocks.

The public API research code calls::

    from verify import Certifier, certify
    res = certify(model, x, y, eps=0.02, norm="inf", method="crown")   # CertResult
    r = Certifier(model, "inf", "crown").radius(x[:1], y[:1], eps_max=1.0)  # RadiusResult

The model is lowered once to the verification IR (:func:`lower`), from which every engine
(:class:`DenseCrown`, :class:`DenseAlphaCrown`, :class:`BranchAndBound`, :class:`Milp`,
:class:`LpAll`, :class:`Lirpa`, :class:`LipschitzMargin`) is built; every result says
what it covers (the deployed model, or an adaptive solver's fixed-step surrogate).
"""

from ._bab import BranchAndBound as BranchAndBound
from ._bab import Verdict as Verdict
from ._errors import CertifyError as CertifyError
from ._errors import EngineError as EngineError
from ._lirpa import Lirpa as Lirpa
from ._lower import COVERS_DEPLOYED as COVERS_DEPLOYED
from ._lower import COVERS_SURROGATE as COVERS_SURROGATE
from ._lower import SUPPORTED_LAYERS as SUPPORTED_LAYERS
from ._lower import AdaptiveSolverError as AdaptiveSolverError
from ._lower import Lowered as Lowered
from ._lower import UnsupportedLayerError as UnsupportedLayerError
from ._lower import lower as lower
from ._lp_all import LpAll as LpAll
from ._milp import ExactRadius as ExactRadius
from ._milp import Milp as Milp
from ._milp import exact_radius as exact_radius
from ._search import RadiusResult as RadiusResult
from ._search import search_radius as search_radius
from .certify import ENGINES as ENGINES
from .certify import METHODS as METHODS
from .certify import NORMS as NORMS
from .certify import CertResult as CertResult
from .certify import Certifier as Certifier
from .certify import certify as certify
from .certify import make_engine as make_engine
from .certify import spec_matrix as spec_matrix
from .engines import DenseAlphaCrown as DenseAlphaCrown
from .engines import DenseCrown as DenseCrown
from .engines import Engine as Engine
from .engines import LipschitzMargin as LipschitzMargin
from .engines import Reference as Reference
from .engines import TrajectoryGraph as TrajectoryGraph
from .export import export_benchmark as export_benchmark
from .export import export_onnx as export_onnx
from .unroll import Unrolled as Unrolled
from .unroll import unroll as unroll

__all__ = [
    "COVERS_DEPLOYED", "COVERS_SURROGATE", "ENGINES", "METHODS", "NORMS", "SUPPORTED_LAYERS",
    "AdaptiveSolverError", "BranchAndBound", "CertResult", "Certifier", "CertifyError", "DenseAlphaCrown", "DenseCrown", "Engine", "EngineError",
    "Lirpa", "LipschitzMargin", "Lowered", "RadiusResult", "Reference", "TrajectoryGraph", "UnsupportedLayerError", "Unrolled", "Verdict",
    "certify", "lower", "make_engine", "search_radius", "spec_matrix", "unroll",
    "ExactRadius", "LpAll", "Milp", "exact_radius", "export_benchmark", "export_onnx",
]
