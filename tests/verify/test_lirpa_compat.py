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
