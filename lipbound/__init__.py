"""lipbound/: Lipschitz constants of layers and networks, and solver error-growth bounds.

Butcher tableaus with exact rationals (:mod:`lipbound.tableau`) drive the symbolic
per-step growth factor of an explicit Runge–Kutta method (:mod:`lipbound.growth`),
which bounds how a perturbation of an ODE block's input can grow; per-layer constants
(:mod:`lipbound.layers`) multiply into network bounds (:mod:`lipbound.network`), which
an empirical search (:mod:`lipbound.empirical`) brackets from below and the
Lipschitz-margin certificate (:mod:`lipbound.certificate`) turns into radii.
"""

from .certificate import linf_to_l2_lipschitz as linf_to_l2_lipschitz
from .certificate import lipschitz_radius as lipschitz_radius
from .certificate import logit_margin as logit_margin
from .empirical import EmpiricalLipschitz as EmpiricalLipschitz
from .empirical import empirical_lipschitz as empirical_lipschitz
from .empirical import jacobian_norm as jacobian_norm
from .empirical import pair_ratio as pair_ratio
from .growth import GrowthFactor as GrowthFactor
from .growth import continuous_factor as continuous_factor
from .growth import exceeds_exponential as exceeds_exponential
from .growth import exponential_excess as exponential_excess
from .growth import fixed_grid_factor as fixed_grid_factor
from .growth import growth_factor as growth_factor
from .growth import increment_lipschitz as increment_lipschitz
from .growth import interpolated_step_factor as interpolated_step_factor
from .growth import resnet_factor as resnet_factor
from .growth import stage_lipschitz as stage_lipschitz
from .growth import step_factor as step_factor
from .growth import step_polynomial as step_polynomial
from .growth import step_sequence_factor as step_sequence_factor
from .layers import NORMS as NORMS
from .layers import LayerBound as LayerBound
from .layers import LipschitzError as LipschitzError
from .layers import conv2d_bound as conv2d_bound
from .layers import conv2d_fft_bound as conv2d_fft_bound
from .layers import dense_matrix as dense_matrix
from .layers import layer_bound as layer_bound
from .layers import linear_bound as linear_bound
from .network import NetworkBound as NetworkBound
from .network import field_bound as field_bound
from .network import network_bound as network_bound
from .network import record_steps as record_steps
from .tableau import TABLEAUS as TABLEAUS
from .tableau import ButcherTableau as ButcherTableau
from .tableau import TableauError as TableauError
from .tableau import tableau_for_solver as tableau_for_solver

__all__ = [
    "ButcherTableau", "TABLEAUS", "TableauError", "tableau_for_solver",
    "GrowthFactor", "continuous_factor", "exceeds_exponential", "exponential_excess",
    "fixed_grid_factor", "growth_factor", "increment_lipschitz", "interpolated_step_factor",
    "resnet_factor", "stage_lipschitz", "step_factor", "step_polynomial", "step_sequence_factor",
    "NORMS", "LayerBound", "LipschitzError", "conv2d_bound", "conv2d_fft_bound", "dense_matrix",
    "layer_bound", "linear_bound",
    "NetworkBound", "field_bound", "network_bound", "record_steps",
    "EmpiricalLipschitz", "empirical_lipschitz", "jacobian_norm", "pair_ratio",
    "lipschitz_radius", "logit_margin", "linf_to_l2_lipschitz",
]
