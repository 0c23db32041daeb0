"""Dense α-CROWN (verify._alpha) and branch and bound (verify._bab) against exact answers.

α-CROWN: never below CROWN, never above per-margin PGD, never below auto_LiRPA's α-CROWN at
equal iterations. Branch and bound: its verdict equals the exact one from enumerating every
activation pattern of a 2-input toy network with a linear program; its counterexamples
misclassify; what it verifies PGD cannot break.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from models import ODENet, SolverConfig
from verify import BranchAndBound, Certifier, CertifyError, DenseAlphaCrown, certify, lower, spec_matrix
from verify._alpha import ITERATIONS
from verify.run import RunConfigError, RunSpec

from ._margin_attack import min_margins

SLACK = 1e-4


def _mlp(seed: int, sizes: tuple[int, ...], shape: tuple[int, ...], scale: float = 1.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers[:-1]).eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(scale)
    net.input_shape = shape
    return net


def _ode(seed: int, steps: int) -> ODENet:
    torch.manual_seed(seed)
    return ODENet(channels=2, solver=SolverConfig.fixed("euler", steps), input_size=8).eval()


NETS = [("mlp", lambda s: _mlp(s, (64, 32, 32, 10), (1, 8, 8), 2.0)), ("ode1", lambda s: _ode(s, 1)),
        ("ode2", lambda s: _ode(s, 2))]


@pytest.mark.parametrize("kind,make,seed", [(*NETS[0], 0), (*NETS[1], 1), (*NETS[2], 0)], ids=[n for n, _ in NETS])
def test_alpha_crown_at_least_crown_and_sound(kind, make, seed):
    net = make(seed)
    torch.manual_seed(10 + seed)
    x = torch.rand(1, 1, 8, 8)
    y = net(x).argmax(1)
    gained = False
    for eps in (0.03, 0.2, 0.4):
        crown = certify(net, x, y, eps, "inf", "crown").lower[0]
        alpha = certify(net, x, y, eps, "inf", "alpha-crown").lower[0]
        attacked = min_margins(net, x, int(y), eps)
        assert bool((alpha >= crown - 1e-6).all())
        assert float((attacked - alpha).min()) >= -SLACK
        gained |= bool((alpha > crown + 1e-4).any())
    assert gained  # the slopes were optimised, not left at CROWN's


def test_alpha_crown_and_bab_on_a_time_channel_field():
    """A field reading the time channel has a bias built from the parameters (with autograd
    history): slope optimisation must not backpropagate into it (soundness campaign trial 0)."""
    torch.manual_seed(6)
    net = ODENet(channels=2, solver=SolverConfig.fixed("heun2", 2), input_size=8, time_channel=True).eval()
    x = torch.rand(1, 1, 8, 8)
    y = net(x).argmax(1)
    for norm, eps in (("inf", 0.3), ("2", 2.0)):
        alpha = certify(net, x, y, eps, norm, "alpha-crown").lower[0]
        assert float((min_margins(net, x, int(y), eps, norm) - alpha).min()) >= -SLACK
    v = BranchAndBound(lower(net), "inf", time_limit=2, attack_steps=0).verdict(x, 0.3, spec_matrix(y, 10)[0])
    assert float((min_margins(net, x, int(y), 0.3) - v.lower).min()) >= -SLACK


def test_alpha_crown_l2_is_sound():
    net = _ode(3, 2)
    x = torch.rand(1, 1, 8, 8)
    y = net(x).argmax(1)
    alpha = certify(net, x, y, 0.5, "2", "alpha-crown").lower[0]
    assert float((min_margins(net, x, int(y), 0.5, "2") - alpha).min()) >= -SLACK
    assert bool((alpha >= certify(net, x, y, 0.5, "2", "crown").lower[0] - 1e-6).all())


@pytest.mark.parametrize("kind,make", [NETS[0], pytest.param(*NETS[1], marks=pytest.mark.slow)],
                         ids=[n for n, _ in NETS[:2]])
def test_alpha_crown_at_least_auto_lirpa_alpha_crown(kind, make):
    """At auto_LiRPA's 20 iterations (margins and intermediate bounds), the dense engine's
    worst margin, the one a certificate rests on, is never below auto_LiRPA's."""
    net = make(4)
    torch.manual_seed(5)
    x = torch.rand(1, 1, 8, 8)
    y = net(x).argmax(1)
    C = spec_matrix(y, 10)
    dense = DenseAlphaCrown(lower(net), "inf", ITERATIONS, intermediate_iterations=ITERATIONS, early_stop=False,
                            warm_start=False)  # equal iterations from CROWN's slopes, as auto_LiRPA
    for eps in (0.03, 0.08, 0.2):
        ours = dense.margins(x, torch.tensor([eps]), C)[0]
        lirpa = Certifier(net, "inf", "alpha-crown", engine="auto_lirpa").margins(x, y, eps)[0]
        assert float(ours.min()) >= float(lirpa.min()) - 1e-4, (eps, ours, lirpa)


# ---- branch and bound ------------------------------------------------------------------
def _patterns_min(net: nn.Sequential, x: torch.Tensor, eps: float, C: torch.Tensor) -> np.ndarray:
    """Exact minimum of each margin over the box: the network is affine on the region of each
    activation pattern, so the minimum over the box is the least LP minimum over the patterns.
    Neurons that interval arithmetic proves stable keep their state; a pattern of a layer whose
    region is empty (LP infeasible) is not extended."""
    lins = [m for m in net if isinstance(m, nn.Linear)]
    Ws = [m.weight.detach().double().numpy() for m in lins]
    bs = [m.bias.detach().double().numpy() for m in lins]
    x0 = x.flatten().double().numpy()
    box = np.stack([np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)], 1)
    lo, hi = box[:, 0], box[:, 1]
    fixed = []  # per hidden layer: 1 (on), 0 (off) or nan (unstable), from intervals
    for w, c in zip(Ws[:-1], bs[:-1]):
        mid, rad = w @ ((lo + hi) / 2) + c, np.abs(w) @ ((hi - lo) / 2)
        fixed.append(np.where(mid - rad >= 0, 1.0, np.where(mid + rad <= 0, 0.0, np.nan)))
        lo, hi = np.maximum(mid - rad, 0), np.maximum(mid + rad, 0)
    # regions: (A, b of the current layer's input, constraint rows, rhs)
    regions = [(np.eye(len(x0)), np.zeros(len(x0)), np.zeros((0, len(x0))), np.zeros(0))]
    for w, c, f in zip(Ws[:-1], bs[:-1], fixed):
        free = np.flatnonzero(np.isnan(f))
        grown = []
        for A, b, rows, rhs in regions:
            pa, pb = w @ A, w @ b + c
            for bits in itertools.product((0.0, 1.0), repeat=len(free)):
                d = f.copy()
                d[free] = bits
                s = 2 * d[free] - 1  # on: p >= 0, off: p <= 0 (only the unstable ones constrain)
                r2 = np.concatenate([rows, -s[:, None] * pa[free]])
                h2 = np.concatenate([rhs, s * pb[free]])
                if len(free) and linprog(np.zeros(len(x0)), A_ub=r2, b_ub=h2, bounds=box, method="highs").status:
                    continue  # empty region
                grown.append((d[:, None] * pa, d * pb, r2, h2))
        regions = grown
    cm = C.double().numpy()
    best = np.full(C.shape[0], np.inf)
    for A, b, rows, rhs in regions:
        out_a, out_b = Ws[-1] @ A, Ws[-1] @ b + bs[-1]
        for r in range(C.shape[0]):
            res = linprog(cm[r] @ out_a, A_ub=rows if len(rows) else None, b_ub=rhs if len(rows) else None,
                          bounds=box, method="highs")
            assert res.status == 0
            best[r] = min(best[r], res.fun + cm[r] @ out_b)
    return best


#: (seed, ε) of (2, 6, 6, 3) toy networks: verified at once, verified after branching (seed 7 at
#: 0.2, seed 8 at 0.35), falsified by PGD and by the exact leaves.
CASES = [(1, 0.05), (1, 0.1), (1, 0.2), (6, 0.1), (6, 0.2), (6, 0.35), (7, 0.1), (7, 0.2), (7, 0.35), (8, 0.35)]


def test_bab_agrees_with_exhaustive_patterns():
    decided = {"verified": 0, "falsified": 0, "verified after branching": 0, "falsified by a leaf": 0}
    for seed, eps in CASES:
        net = _mlp(seed, (2, 6, 6, 3), (1, 1, 2), 2.5)
        x = torch.rand(1, 1, 1, 2, generator=torch.Generator().manual_seed(seed))
        y = net(x).argmax(1)
        C = spec_matrix(y, 3)[0]
        exact = _patterns_min(net, x, eps, C)
        assert abs(exact.min()) > 1e-3  # no tie: the verdict is not a matter of rounding
        ir = lower(net)
        for attack_steps in (50, 0):  # PGD first; none (only the exact leaves falsify)
            v = BranchAndBound(ir, "inf", time_limit=30, attack_steps=attack_steps).verdict(x, eps, C)
            assert v.status == ("verified" if exact.min() > 0 else "falsified"), (seed, eps, exact, v)
            assert bool((v.lower.double().numpy() <= exact + SLACK).all())
            decided[v.status] += 1
            if v.status == "falsified":
                decided["falsified by a leaf"] += attack_steps == 0 and v.domains > 1
                cex = v.counterexample
                assert float((cex - x).abs().max()) <= eps + 1e-6 and 0 <= float(cex.min()) <= float(cex.max()) <= 1
                assert int(net(cex).argmax(1)) != int(y)  # it really misclassifies
            else:
                decided["verified after branching"] += v.domains > 1
                assert bool((v.lower > 0).all())
                assert float(min_margins(net, x, int(y), eps).min()) > 0  # PGD cannot break it
    assert min(decided.values()) >= 2, decided


def test_bab_time_limit_gives_unknown_with_a_sound_bound():
    net = _mlp(7, (2, 16, 16, 16, 3), (1, 1, 2), 3.0)
    x = torch.rand(1, 1, 1, 2, generator=torch.Generator().manual_seed(7))
    y = net(x).argmax(1)
    C = spec_matrix(y, 3)[0]
    v = BranchAndBound(lower(net), "inf", time_limit=0.3, attack_steps=0).verdict(x, 0.25, C)
    exact_ish = min_margins(net, x, int(y), 0.25)
    assert bool((v.lower <= exact_ish + SLACK).all())
    if v.status == "unknown":
        assert v.counterexample is None


def test_bab_radius_search_and_errors():
    net = _mlp(2, (2, 8, 10), (1, 1, 2), 2.5)
    x = torch.rand(1, 1, 1, 2, generator=torch.Generator().manual_seed(2))
    y = net(x).argmax(1)
    bab = Certifier(net, "inf", "bab", time_limit=10).radius(x, y, eps_max=1.0)
    crown = Certifier(net, "inf", "crown").radius(x, y, eps_max=1.0)
    assert bab.radius >= crown.radius
    assert float(min_margins(net, x, int(y), bab.radius).min()) > 0
    with pytest.raises(CertifyError, match="L∞"):
        Certifier(net, "2", "bab")
    with pytest.raises(CertifyError, match="time limit"):
        Certifier(net, "inf", "bab", time_limit=0)
    with pytest.raises(RunConfigError, match="time_limit"):
        RunSpec(model="ode", methods=("bab",), time_limit=-1)
    assert RunSpec.from_json(RunSpec(model="ode", methods=("bab",), time_limit=5).to_json()).time_limit == 5


def test_a_passed_deadline_stops_the_slope_optimisation_at_crowns_bound():
    """BaB's time limit reaches the α-CROWN optimisation: past its deadline it stops after the first
    evaluation (CROWN's slopes), a valid bound, instead of running its iterations."""
    net = NETS[0][1](0)
    torch.manual_seed(10)
    x = torch.rand(1, 1, 8, 8)
    y = net(x).argmax(1)
    C = spec_matrix(y, 10)[0]
    engine = DenseAlphaCrown(lower(net), "inf", early_stop=False, warm_start=False)
    eps = torch.tensor([0.2])
    free = engine.margins(x, eps, C[None])[0]
    engine._crown.deadline = 0.0  # long past
    stopped = engine.margins(x, eps, C[None])[0]
    crown = certify(net, x, y, 0.2, "inf", "crown").lower[0]
    assert torch.allclose(stopped, crown, atol=1e-5)
    assert bool((free > crown + 1e-4).any())


@pytest.mark.parametrize("kind,make,seed", [(*NETS[0], 0), (*NETS[2], 0)], ids=["mlp", "ode2"])
def test_warm_start_continues_the_slopes_of_the_same_example_only(kind, make, seed):
    """With warm starts a radius search's bounds continue each other's optimisation: at the same ε the
    fourth call (after three at nearby ε) is at least the first, every call stays below per-margin PGD,
    and another example (or specification) starts afresh, exactly as a new engine would."""
    net = make(seed)
    torch.manual_seed(10 + seed)
    x, x2 = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    y, y2 = net(x).argmax(1), net(x2).argmax(1)
    C, C2 = spec_matrix(y, 10), spec_matrix(y2, 10)

    def engine(warm):
        return DenseAlphaCrown(lower(net), "inf", iterations=4, intermediate_iterations=2, early_stop=False,
                               warm_start=warm)

    warm, cold = engine(True), engine(False)
    eps = 0.15 if kind == "mlp" else 0.3
    first = warm.margins(x, torch.tensor([eps]), C)[0]
    assert torch.equal(first, cold.margins(x, torch.tensor([eps]), C)[0])  # nothing to continue yet
    for e in (0.9 * eps, 1.1 * eps):
        got = warm.margins(x, torch.tensor([e]), C)[0]
        assert float((got - min_margins(net, x, int(y), e)).max()) <= SLACK
    again = warm.margins(x, torch.tensor([eps]), C)[0]
    assert float((min_margins(net, x, int(y), eps) - again).min()) >= -SLACK
    assert float(again.sum()) > float(first.sum()) + 1e-4  # the optimisation went on
    assert torch.equal(warm.margins(x2, torch.tensor([eps]), C2)[0], cold.margins(x2, torch.tensor([eps]), C2)[0])


def test_bab_time_limit_runs_on_its_clock():
    """The time limit is read on ``clock`` only: a clock that never advances lets a 1e-9 s limit decide
    a case that needs branching (seed 7 at 0.2) exactly, and a clock that jumps 1 s per reading ends it
    unknown after a few readings, with a sound bound."""
    net = _mlp(7, (2, 6, 6, 3), (1, 1, 2), 2.5)
    x = torch.rand(1, 1, 1, 2, generator=torch.Generator().manual_seed(7))
    y = net(x).argmax(1)
    C = spec_matrix(y, 3)[0]
    exact = _patterns_min(net, x, 0.2, C)
    ir = lower(net)
    frozen = BranchAndBound(ir, "inf", time_limit=1e-9, attack_steps=0, clock=lambda: 0.0).verdict(x, 0.2, C)
    assert frozen.status == "verified" and frozen.domains > 1 and exact.min() > 0
    ticks = itertools.count()
    jumping = BranchAndBound(ir, "inf", time_limit=2.5, attack_steps=0, clock=lambda: float(next(ticks)))
    v = jumping.verdict(x, 0.2, C)
    assert v.status == "unknown" and v.seconds >= 2.5 and v.domains < frozen.domains
    assert bool((v.lower.double().numpy() <= exact + SLACK).all())
