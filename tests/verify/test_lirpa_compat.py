"""Each auto_LiRPA compatibility patch provides what auto_LiRPA 0.3 relies on."""

import sys

import numpy as np
import torch

from verify._lirpa_compat import import_auto_lirpa

lirpa = import_auto_lirpa()


def test_numpy_arraysetops_isin():
    mod = sys.modules["numpy.lib.arraysetops"]
    assert mod.isin(np.array([1, 2, 3]), [2]).tolist() == [False, True, False]


def test_torch_six_string_classes():
    assert isinstance("name", torch._six.string_classes)


def test_set_opset_version_sets_the_global():
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    import torch.onnx.symbolic_helper as helper

    old = GLOBALS.export_onnx_opset_version
    helper._set_opset_version(12)
    assert GLOBALS.export_onnx_opset_version == 12
    GLOBALS.export_onnx_opset_version = old


def test_node_getitem_reads_attributes():
    graph = torch.jit.trace(lambda a: a.transpose(0, 1), torch.zeros(2, 3)).graph
    node = next(n for n in graph.nodes() if n.kind() == "prim::Constant" and n.attributeNames())
    assert node["value"] == getattr(node, node.kindOf("value"))("value")


def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 5 * 5, 3))
    x = torch.rand(1, 1, 5, 5)
    return net, x, lirpa.BoundedModule(net, torch.zeros_like(x), device="cpu")


def test_named_members_accepts_remove_duplicate():
    _, _, bm = _tiny()
    names = [n for n, _ in bm.named_parameters(remove_duplicate=False)]
    assert len(names) == 4 and len(list(bm.named_parameters())) == 4


def test_end_to_end_bound_contains_the_output():
    net, x, bm = _tiny()
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=0.05)
    lb, ub = bm.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), method="backward")
    for _ in range(50):
        out = net((x + 0.05 * (2 * torch.rand_like(x) - 1))).detach()
        assert (out >= lb - 1e-6).all() and (out <= ub + 1e-6).all()


def test_alpha_crown_through_maxpool_is_sound_and_no_looser_than_crown():
    torch.manual_seed(0)
    # the convolution after the pooling is a start node whose size is a torch.Size
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(3 * 3 * 3, 4)).eval()
    x = torch.rand(1, 1, 6, 6)
    bm = lirpa.BoundedModule(net, torch.zeros_like(x), bound_opts={"conv_mode": "matrix"}, device="cpu")
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=0.1)
    crown, _ = bm.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), method="backward", bound_upper=False)
    alpha, _ = bm.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), method="CROWN-Optimized", bound_upper=False)
    assert (alpha.detach() >= crown - 1e-5).all()
    for _ in range(100):
        out = net(x + 0.1 * (2 * torch.rand_like(x) - 1)).detach()
        assert (out >= alpha.detach() - 1e-5).all()


def test_lp_patches_concretisation_is_patched_once():
    # the bound itself is checked in tests/verify/test_soundness_regressions.py (trial 8906)
    lirpa = import_auto_lirpa()
    import_auto_lirpa()
    fn = lirpa.PerturbationLpNorm.concretize_patches
    assert getattr(fn, "_honours_output_padding", False)
    from verify._lirpa_compat import applied_patches
    assert applied_patches().count("PerturbationLpNorm.concretize_patches(lp output padding)") == 1
