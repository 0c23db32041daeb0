"""Every compatibility patch auto_LiRPA 0.3 needs on torch 2.13 / numpy 2, in one place.

auto_LiRPA 0.3 (the only version on the package registry) was written for torch < 1.13
and numpy 1. Each patch below restores one name or behaviour it relies on (one mends a
shape bug of its own, in α-CROWN through max-pooling); each is
idempotent, applied only when the name is missing, and covered by a test in
``tests/verify/test_lirpa_compat.py``. Import auto_LiRPA only through
:func:`import_auto_lirpa`.

References:
    Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness and
    Beyond", NeurIPS 2020 (auto_LiRPA).
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import numpy as np
import torch

_PATCHED: list[str] = []


def _patch_numpy_arraysetops() -> None:
    # auto_LiRPA/operators/base.py does `from numpy.lib.arraysetops import isin`;
    # numpy 2 made that module private (numpy.lib._arraysetops_impl).
    if "numpy.lib.arraysetops" in sys.modules:
        return
    try:
        import numpy.lib.arraysetops  # noqa: F401
        return
    except ImportError:
        pass
    mod = types.ModuleType("numpy.lib.arraysetops")
    mod.isin = np.isin  # type: ignore[attr-defined]
    mod.unique = np.unique  # type: ignore[attr-defined]
    sys.modules["numpy.lib.arraysetops"] = mod
    np.lib.arraysetops = mod  # type: ignore[attr-defined]
    _PATCHED.append("numpy.lib.arraysetops")


def _patch_torch_six() -> None:
    # BoundedModule.register_parameter checks `torch._six.string_classes`; torch 2 removed
    # torch._six.
    if hasattr(torch, "_six") or "torch._six" in sys.modules:
        return
    mod = types.ModuleType("torch._six")
    mod.string_classes = (str, bytes)  # type: ignore[attr-defined]
    sys.modules["torch._six"] = mod
    torch._six = mod  # type: ignore[attr-defined]
    _PATCHED.append("torch._six")


def _patch_set_opset_version() -> None:
    # parse_graph.py imports `_set_opset_version` from torch.onnx.symbolic_helper and sets
    # opset 12 before running the ONNX graph passes; torch 2 moved the opset into GLOBALS.
    import torch.onnx.symbolic_helper as helper

    if hasattr(helper, "_set_opset_version"):
        return
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    def _set_opset_version(opset_version: int) -> None:
        GLOBALS.export_onnx_opset_version = opset_version

    helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]
    _PATCHED.append("torch.onnx.symbolic_helper._set_opset_version")


def _node_getitem(node: Any, name: str) -> Any:
    """``node[name]``: the attribute ``name`` of a TorchScript node, read with its typed getter."""
    return getattr(node, node.kindOf(name))(name)


def _patch_node_getitem() -> None:
    # parse_graph reads node attributes as `n[k]`; torch 2 removed Node.__getitem__
    # (the typed getters n.i(k), n.f(k), n.t(k), ... selected by n.kindOf(k) remain).
    if hasattr(torch._C.Node, "__getitem__"):
        return
    torch._C.Node.__getitem__ = _node_getitem  # type: ignore[attr-defined]
    _PATCHED.append("torch._C.Node.__getitem__")


def _patch_named_members(bounded_module: type) -> None:
    # torch 2's named_parameters()/named_buffers() pass `remove_duplicate=` to
    # _named_members, which BoundedModule overrides with the old 3-argument signature.
    original = bounded_module._named_members
    if getattr(original, "_accepts_remove_duplicate", False):
        return

    def _named_members(self: Any, get_members_fn: Any, prefix: str = "", recurse: bool = True,
                       remove_duplicate: bool = True) -> Any:
        if remove_duplicate:
            return original(self, get_members_fn, prefix, recurse)
        return torch.nn.Module._named_members(self, get_members_fn, prefix, recurse, False)

    _named_members._accepts_remove_duplicate = True  # type: ignore[attr-defined]
    bounded_module._named_members = _named_members
    _PATCHED.append("BoundedModule._named_members(remove_duplicate=...)")


def _patch_maxpool_alpha_size(bound_maxpool: type) -> None:
    # α-CROWN through max-pooling: BoundMaxPool.init_opt_parameters puts the start node's
    # output size into its slope shape as given, a torch.Size for a convolutional start node,
    # which torch.empty rejects; auto_LiRPA's other operators flatten it to its product first.
    original = bound_maxpool.init_opt_parameters
    if getattr(original, "_flattens_sizes", False):
        return

    def init_opt_parameters(self: Any, start_nodes: Any) -> Any:
        flat = [(ns, math.prod(size) if isinstance(size, torch.Size) else size, idx) for ns, size, idx in start_nodes]
        return original(self, flat)

    init_opt_parameters._flattens_sizes = True  # type: ignore[attr-defined]
    bound_maxpool.init_opt_parameters = init_opt_parameters
    _PATCHED.append("BoundMaxPool.init_opt_parameters(start-node sizes)")


def _patch_lp_patches_concretize(perturbation: type) -> None:
    # ℓp (p < ∞) concretisation of a Patches bound: PerturbationLpNorm.concretize_patches turns the
    # patches into a dense matrix with patches_to_matrix, which ignores the patches' output padding
    # (a strided convolution whose last input rows/columns the transposed convolution does not
    # reach). The bound then loses those columns and can exceed the true minimum (soundness
    # campaign trial 8906: margin bound 3.3e-4 above an attacked point). Patches.matmul does honour
    # the output padding, and a dense row's entries are one patch's entries inside the input, so
    # A·x = A.matmul(x) and ‖row‖_q = (|A|^q).matmul(1)^(1/q), exactly, without the dense matrix.
    original = perturbation.concretize_patches
    if getattr(original, "_honours_output_padding", False):
        return

    def concretize_patches(self: Any, x: Any, A: Any, sign: int, extra_constr: Any) -> Any:
        if self.norm == np.inf or A.identity:
            return original(self, x, A, sign, extra_constr)
        q = float(self.dual_norm)
        powered = A.create_similar(A.patches.abs() ** q)
        deviation = powered.matmul(torch.ones_like(x)).clamp_min(0) ** (1.0 / q) * self.eps
        bound = A.matmul(x) + sign * deviation
        if extra_constr is not None:
            bound = bound + extra_constr
        return bound

    concretize_patches._honours_output_padding = True  # type: ignore[attr-defined]
    perturbation.concretize_patches = concretize_patches
    _PATCHED.append("PerturbationLpNorm.concretize_patches(lp output padding)")


def _patch_matmul_spec(bound_matmul: type, bound_linear: type, linear_bound: type) -> None:
    # A bias-free nn.Linear exports as MatMul, and BoundMatMul subclasses BoundLinear; IBP and the
    # forward mode hand the last such node the specification C (to merge into its weight), but
    # BoundMatMul's overrides take no C: "interval_propagate() got an unexpected keyword argument
    # 'C'". BoundLinear's own methods do merge C, given the weight in the layout BoundMatMul's
    # overrides hand them.
    if getattr(bound_matmul.interval_propagate, "_takes_spec", False):
        return
    original_forward = bound_matmul.bound_forward

    def interval_propagate(self: Any, *v: Any, C: Any = None) -> Any:
        return bound_linear.interval_propagate(self, *v, C=C)

    def bound_forward(self: Any, dim_in: Any, x: Any, y: Any, C: Any = None) -> Any:
        if C is None:
            return original_forward(self, dim_in, x, y)
        t = (lambda a: a.transpose(-1, -2) if a is not None else None)
        y = linear_bound(t(y.lw), t(y.lb), t(y.uw), t(y.ub), t(y.lower), t(y.upper))
        return bound_linear.bound_forward(self, dim_in, x, y, C=C)

    interval_propagate._takes_spec = True  # type: ignore[attr-defined]
    bound_matmul.interval_propagate = interval_propagate
    bound_matmul.bound_forward = bound_forward
    _PATCHED.append("BoundMatMul.interval_propagate/bound_forward(C)")


def patches_safe(module: torch.nn.Module) -> bool:
    """Whether auto_LiRPA 0.3's ``conv_mode="patches"`` can bound ``module``.

    Its backward concretisation of a convolutional bound on a graph root other than the input
    (a buffer, such as the time channel's per-position bias map) expands the root's value to
    the *input's* shape and fails ("The expanded size of the tensor (14) must match the existing
    size (3)") unless the shapes agree; ``"matrix"`` mode bounds the same graph and gives the
    same bounds.
    """
    return next(module.buffers(), None) is None


def import_auto_lirpa() -> types.ModuleType:
    """auto_LiRPA, imported after applying every compatibility patch.

    Returns:
        the ``auto_LiRPA`` module.
    """
    _patch_numpy_arraysetops()
    _patch_torch_six()
    _patch_set_opset_version()
    _patch_node_getitem()
    import auto_LiRPA

    from auto_LiRPA.operators.pooling import BoundMaxPool

    _patch_named_members(auto_LiRPA.BoundedModule)
    _patch_maxpool_alpha_size(BoundMaxPool)
    _patch_lp_patches_concretize(auto_LiRPA.PerturbationLpNorm)
    from auto_LiRPA.linear_bound import LinearBound
    from auto_LiRPA.operators.linear import BoundLinear, BoundMatMul

    _patch_matmul_spec(BoundMatMul, BoundLinear, LinearBound)
    return auto_LiRPA


def applied_patches() -> tuple[str, ...]:
    """Names of the patches this process applied (for logs and tests)."""
    return tuple(_PATCHED)
