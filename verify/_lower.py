"""The one lowering: a classifier as a chain of layer runs and ODE flows (the verification IR).

Every engine is built from the :class:`Lowered` IR this module makes, never from the model:
the dense CROWN graph (:mod:`verify._dense_graph`), the static module auto_LiRPA traces
(:mod:`verify.unroll`), the Lipschitz margin (:mod:`verify._lipschitz`) and the measured
growth through the solver (:func:`Lowered.states`).

A model lowers when it is a chain: a supported layer, an ``nn.Sequential``, a
:class:`models.ODEBlock` (whose field is itself a chain of supported layers and
:class:`models.ConcatConv2d` time-channel convolutions, of any depth, with or without a
trailing ReLU), a :class:`models.ResNet` (Euler steps of its fields), or any module whose
children, in registration order, form such a chain (ODENet, LeNet5, MLP, a user's own
module). A chain read from registration order is only a guess about ``forward``, so it is
confirmed numerically: the IR's logits on random inputs (and a field's value at random
states and times) must equal the model's, or the model is refused with the difference.

An ODE block is integrated by its explicit Runge–Kutta tableau over a step sequence: the
fixed grid of a fixed-step solver, or (``fixed_steps=True`` only) the steps an adaptive
solver accepted on one clean input, the last read from torchdiffeq's interpolant at T
(:mod:`verify._dense_output`): the *fixed-step surrogate*, which the IR says it covers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from lipbound.tableau import ButcherTableau, tableau_for_solver
from models.cas import CASRule, integrate, rule_for
from models.fields import ConcatConv2d, call_field
from models.odenet import ODEBlock
from models.resnet import ResNet

from ._dense_output import dense_output_weights

#: what a certificate holds for: the model as it runs, or the fixed-step surrogate of an adaptive solve.
COVERS_DEPLOYED = "the deployed model"
COVERS_SURROGATE = "fixed-step surrogate, not the deployed solver"

#: layer types a chain may hold (in a field also :class:`models.ConcatConv2d`).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.AvgPool2d, nn.MaxPool2d, nn.Identity,
)
#: relative tolerance of the numerical confirmation of a chain read from registration order.
CHAIN_RTOL = 1e-4


class UnsupportedLayerError(ValueError):
    """A layer (or model) that cannot be lowered to a verifiable chain; the message names it."""


class AdaptiveSolverError(UnsupportedLayerError):
    """An adaptive solver, whose deployed step sequence no fixed graph reproduces on a whole ball."""


Op = tuple[str, nn.Module]  # (where, layer)


@dataclasses.dataclass(frozen=True)
class Layers:
    """A run of supported layers applied in order."""

    ops: tuple[Op, ...]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        for _, layer in self.ops:
            h = layer(h)
        return h


@dataclasses.dataclass(frozen=True)
class Step:
    """One Runge–Kutta step from ``t0`` of size ``dt`` of the field chain ``field``, its output
    read at ``t0 + theta·dt`` (θ < 1 only for the interpolated last step of an adaptive solve)."""

    t0: float
    dt: float
    theta: float
    field: tuple[Op, ...]


@dataclasses.dataclass(frozen=True)
class Flow:
    """An ODE block (or a ResNet's residual blocks) as explicit Runge–Kutta steps."""

    method: str
    tableau: ButcherTableau
    steps: tuple[Step, ...]
    where: str

    def output_row(self, step: Step) -> tuple[float, ...]:
        """The weights b of the stages in the step's output (dense-output weights when θ < 1)."""
        if step.theta == 1.0:
            return tuple(self.tableau.b_float)
        return tuple(dense_output_weights(self.method, self.tableau, step.theta))

    def needed(self, b: Sequence[float]) -> list[bool]:
        """Stages the output or a later stage uses (dopri5's FSAL stage is not)."""
        a, s = self.tableau.a_float, len(b)
        return [b[i] != 0.0 or any(a[k][i] != 0.0 for k in range(i + 1, s)) for i in range(s)]

    def step(self, step: Step, y: torch.Tensor) -> torch.Tensor:
        """One step of the state batch ``y``, in the solver's own arithmetic."""
        a, c = self.tableau.a_float, self.tableau.c_float
        b = self.output_row(step)
        ks: dict[int, torch.Tensor] = {}
        for i, use in enumerate(self.needed(b)):
            if use:
                yi = y + sum(step.dt * a[i][j] * ks[j] for j in range(i) if a[i][j] != 0.0)
                ks[i] = field_value(step.field, step.t0 + c[i] * step.dt, yi)
        return y + sum(step.dt * b[i] * ks[i] for i in ks if b[i] != 0.0)


@dataclasses.dataclass(frozen=True)
class CASFlow:
    """An ODE block integrated by a controlled adaptive solver (:mod:`models.cas`) as deployed.

    Its step sequence depends on the input, so it has no fixed steps: engines bound it through
    the trajectory graph of every step decision (:mod:`verify._trajectory`).
    """

    rule: CASRule
    h0: float
    field: tuple[Op, ...]
    where: str

    @property
    def tableau(self) -> ButcherTableau:
        """The embedded pair."""
        return self.rule.butcher

    def integrate(self, y: torch.Tensor) -> torch.Tensor:
        """The deployed solve of the state batch ``y`` (each example on its own steps)."""
        return integrate(lambda t, h: field_value(self.field, float(t), h), y, self.rule, self.h0)[0]


Part = Layers | Flow | CASFlow


@dataclasses.dataclass(frozen=True)
class Lowered:
    """A classifier as layer runs and flows, and what that IR covers.

    Attributes:
        parts: the chain, input to logits.
        input_shape: (C, H, W) of one input.
        num_classes: logits.
        description: e.g. ``"rk4 4 steps, T=1"``; a surrogate's says so.
        covers: :data:`COVERS_DEPLOYED` or :data:`COVERS_SURROGATE`.
        adaptive_distance: max |logits| difference between the adaptive solve and the
            surrogate on the clean input (None unless a surrogate).
    """

    parts: tuple[Part, ...]
    input_shape: tuple[int, ...]
    num_classes: int
    description: str
    covers: str = COVERS_DEPLOYED
    adaptive_distance: float | None = None
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")

    @property
    def adaptive(self) -> bool:
        """True for the fixed-step surrogate of an adaptive solver."""
        return self.covers == COVERS_SURROGATE

    @property
    def steps(self) -> tuple[tuple[float, float, float], ...]:
        """(t0, dt, θ) of every flow step, in order."""
        return tuple((s.t0, s.dt, s.theta) for p in self.parts if isinstance(p, Flow) for s in p.steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch, computed through the IR."""
        h = x
        for part in self.parts:
            h = part(h) if isinstance(part, Layers) else _flow(part, h)
        return h

    def states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The first flow's state before its first step and after each step (empty without a flow)."""
        h = x
        for part in self.parts:
            if isinstance(part, Layers):
                h = part(h)
                continue
            if isinstance(part, CASFlow):
                return []
            out = [h]
            for step in part.steps:
                out.append(part.step(step, out[-1]))
            return out
        return []


def _flow(flow: Flow | CASFlow, h: torch.Tensor) -> torch.Tensor:
    if isinstance(flow, CASFlow):
        return flow.integrate(h)
    for step in flow.steps:
        h = flow.step(step, h)
    return h


def field_value(field: Sequence[Op], t: float, h: torch.Tensor) -> torch.Tensor:
    """f(t, h) of a field chain."""
    tt = torch.tensor(float(t), dtype=h.dtype, device=h.device)
    for _, layer in field:
        h = layer(tt, h) if isinstance(layer, ConcatConv2d) else layer(h)
    return h


# ---- lowering ---------------------------------------------------------------------------------
def is_adaptive(model: nn.Module) -> bool:
    """True when the model integrates an ODE block with an adaptive solver (a controlled adaptive
    solver is not one: the trajectory graph certifies it as deployed)."""
    return any(not m.solver.is_fixed and not m.solver.is_cas for m in model.modules() if isinstance(m, ODEBlock))


def has_cas(model: nn.Module) -> bool:
    """True when the model integrates an ODE block with a controlled adaptive solver (certified
    through its trajectory graph)."""
    return any(m.solver.is_cas for m in model.modules() if isinstance(m, ODEBlock))


def adaptive_refusal(solver: object) -> str:
    """The one-line reason an adaptive model is not certified (and what can be)."""
    describe = getattr(solver, "describe", None)
    name = describe() if callable(describe) else str(solver)
    return (f"{name} is an adaptive solver: its step sequence changes inside the perturbation ball, so a "
            "certificate of one step sequence says nothing about the deployed model, and its continuous step-size "
            "rule has no finite graph of step decisions to follow; certify its controlled-adaptive twin (CLI: "
            "--solver cas-dopri5:TOL, certified as deployed by the trajectory graph) or the fixed-step surrogate "
            "of the steps accepted on the clean input with fixed_steps=True (CLI: --fixed-steps), which covers "
            "that surrogate only")


def covers_cas(description: str) -> str:
    """What a certificate of a controlled adaptive solver holds for: the deployed model, every trajectory."""
    return f"{COVERS_DEPLOYED} with its controlled adaptive solver ({description.split(',')[0]}), every step sequence"


def surrogate_description(solver: object, n_steps: int) -> str:
    """How a fixed-step surrogate of an adaptive solve was built (it names what it covers)."""
    describe = getattr(solver, "describe", None)
    name = describe() if callable(describe) else str(solver)
    return (f"{COVERS_SURROGATE}: {name}, the {n_steps} steps accepted on the clean input replayed, "
            "the last read from the solver's interpolant at T")


def lower(model: nn.Module, x: torch.Tensor | None = None, fixed_steps: bool = False) -> Lowered:
    """The IR of ``model`` (see the module docstring).

    Args:
        model: a chain of supported layers and ODE blocks, in eval mode.
        x: one clean input (1, C, H, W); required for the surrogate of an adaptive solver,
            whose accepted steps on ``x`` it replays.
        fixed_steps: lower an adaptive solver to its fixed-step surrogate (otherwise refused).

    Raises:
        AdaptiveSolverError: an adaptive solver without ``fixed_steps``.
        UnsupportedLayerError: a layer or model that is no such chain, named.
        ValueError: the surrogate of an adaptive solver without a single input ``x``.
    """
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    adaptive = [b for b in blocks if not b.solver.is_fixed and not b.solver.is_cas]
    if adaptive and not fixed_steps:
        raise AdaptiveSolverError(adaptive_refusal(adaptive[0].solver))
    if adaptive and (x is None or x.dim() != 4 or x.shape[0] != 1):
        raise ValueError(f"adaptive solver {adaptive[0].solver.describe()}: its fixed-step surrogate needs one "
                         "clean input x of shape (1, C, H, W)")
    recorded = _record_steps(model, adaptive, x) if adaptive else {}
    parts = _merge(_parts(model, "model", recorded, top=True))
    shape = tuple(getattr(model, "input_shape", (1, 28, 28)))
    p = next(model.parameters(), None)
    if p is None:
        raise UnsupportedLayerError("a model without parameters has nothing to verify")
    ir = Lowered(tuple(parts), shape, int(getattr(model, "num_classes", 10)), _describe(model, parts, adaptive),
                 dtype=p.dtype, device=p.device)
    if adaptive:
        with torch.no_grad():
            dist = float((ir.forward(x) - model(x)).abs().max())
        ir = dataclasses.replace(ir, covers=COVERS_SURROGATE, adaptive_distance=dist)
    if any(isinstance(p, CASFlow) for p in parts):
        ir = dataclasses.replace(ir, covers=covers_cas(ir.description))
    _confirm(model, ir, x)
    return ir


def _describe(model: nn.Module, parts: Sequence[Part], adaptive: Sequence[ODEBlock]) -> str:
    cas = [p for p in parts if isinstance(p, CASFlow)]
    if cas:
        return (f"{cas[0].rule.tableau} CAS atol={cas[0].rule.atol:g} rtol={cas[0].rule.rtol:g} h0={cas[0].h0:g} "
                f"T={cas[0].rule.T:g}, as deployed (trajectory graph)")
    if adaptive:
        return surrogate_description(adaptive[0].solver, sum(len(p.steps) for p in parts if isinstance(p, Flow)))
    if isinstance(model, ResNet):
        return f"resnet {model.n_blocks} blocks, step {model.step:g}"
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    if len(blocks) == 1:
        s = blocks[0].solver
        return f"{s.method} {s.n_steps} steps, T={s.T:g}"
    return type(model).__name__.lower()


def _record_steps(model: nn.Module, blocks: Sequence[ODEBlock], x: torch.Tensor
                  ) -> dict[int, tuple[tuple[float, float, float], ...]]:
    """(t0, dt, θ) of the steps each adaptive block accepted on ``x``, θ = 1 but for the last.

    torchdiffeq steps until a step ends at or beyond T and reads y(T) from that step's
    interpolant at θ = (T − t0)/dt, so the last step keeps its size and carries θ.
    """
    with contextlib.ExitStack() as stack, torch.no_grad():
        for b in blocks:
            stack.enter_context(b.recording())
        model(x)
    out = {}
    for b in blocks:
        T, steps = b.solver.T, []
        for t0, dt in b.accepted_steps:
            steps.append((t0, dt, 1.0 if t0 + dt <= T else (T - t0) / dt))
            if t0 + dt >= T:
                break
        out[id(b)] = tuple(steps)
    return out


def _parts(module: nn.Module, where: str, recorded: dict, top: bool = False) -> Iterator[Part]:
    if isinstance(module, SUPPORTED_LAYERS):
        yield Layers(((where, module),))
    elif isinstance(module, ODEBlock):
        yield _ode_flow(module, where, recorded)
    elif isinstance(module, ResNet):
        yield from _parts(module.stem, f"{where}.stem", recorded)
        euler = tableau_for_solver("euler")
        steps = tuple(Step(k * module.step, module.step, 1.0, _field_chain(module.block_field(k), f"{where}.fields.{k}"))
                      for k in range(module.n_blocks))
        yield Flow("euler", euler, steps, f"{where}.fields")
        yield from _parts(module.head, f"{where}.head", recorded)
    elif isinstance(module, nn.Sequential) or len(list(module.children())) > 0:
        for name, child in module.named_children():
            yield from _parts(child, f"{where}.{name}", recorded)
    else:
        raise UnsupportedLayerError(_unsupported(module, where))


def _unsupported(module: nn.Module, where: str) -> str:
    hint = ""
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        source = ""
    if "odeint" in source:
        hint = ("; its forward calls odeint directly: wrap the vector field in models.ODEBlock(field, solver) "
                "so that the solver is visible to the verifier")
    return (f"cannot verify layer {where} ({type(module).__name__}); supported layers: "
            + ", ".join(t.__name__ for t in SUPPORTED_LAYERS) + ", ODEBlock (fields also ConcatConv2d)" + hint)


def _ode_flow(block: ODEBlock, where: str, recorded: dict) -> Flow | CASFlow:
    s = block.solver
    field = _field_chain(block.field, f"{where}.field")
    if s.is_cas:
        return CASFlow(rule_for(s), cas_h0(block), field, where)
    steps = recorded.get(id(block)) or tuple((t0, dt, 1.0) for t0, dt in s.grid())
    tab = tableau_for_solver(s.method)
    return Flow(s.method, tab, tuple(Step(t0, dt, th, field) for t0, dt, th in steps), where)


def cas_h0(block: ODEBlock) -> float:
    """The first step a CAS block uses in eval mode: its fixed h0, or its learned running mean."""
    s = block.solver
    if s.step_size is not None:
        return float(s.step_size)
    learned = getattr(block, "running_mean_step", None)  # absent until the block has run a CAS
    return min(1.0, max(0.0, float(learned))) if learned is not None else 0.0


def _field_chain(field: nn.Module, where: str) -> tuple[Op, ...]:
    """The field as a chain of ops, read from registration order and confirmed numerically."""
    ops: list[Op] = []

    def walk(m: nn.Module, w: str) -> None:
        if isinstance(m, (ConcatConv2d, *SUPPORTED_LAYERS)):
            ops.append((w, m))
        elif len(list(m.children())) > 0:
            for name, child in m.named_children():
                walk(child, f"{w}.{name}")
        else:
            raise UnsupportedLayerError(_unsupported(m, w).replace("cannot verify layer", "cannot verify field layer"))

    walk(field, where)
    _confirm_field(field, tuple(ops), where)
    return tuple(ops)


def _probe_state(ops: Sequence[Op]) -> tuple[int, ...] | None:
    """A small state shape the field's first affine op accepts (None: no affine op)."""
    for _, op in ops:
        if isinstance(op, ConcatConv2d):
            return (1, op.conv.in_channels - int(op.time_channel), 6, 6)
        if isinstance(op, nn.Conv2d):
            return (1, op.in_channels, 6, 6)
        if isinstance(op, nn.Linear):
            return (1, op.in_features)
    return None


def _confirm_field(field: nn.Module, ops: tuple[Op, ...], where: str) -> None:
    shape = _probe_state(ops)
    if shape is None:
        return
    p = next(field.parameters())
    g = torch.Generator(device="cpu").manual_seed(0)
    for t in (0.0, 0.37):
        h = torch.randn(shape, generator=g).to(p)
        tt = torch.tensor(t, dtype=p.dtype, device=p.device)
        with torch.no_grad():
            try:
                want = call_field(field, tt, h)
            except RuntimeError:
                return  # the probe shape does not fit this field: the whole-model check decides
            got = field_value(ops, t, h)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=CHAIN_RTOL, atol=CHAIN_RTOL):
            raise UnsupportedLayerError(
                f"vector field {where} ({type(field).__name__}) is not the chain of its layers in registration "
                "order; write it as an nn.Sequential of supported layers and models.ConcatConv2d")


def _merge(parts: Iterator[Part]) -> list[Part]:
    """Consecutive layer runs joined into one."""
    out: list[Part] = []
    for p in parts:
        if isinstance(p, Layers) and out and isinstance(out[-1], Layers):
            out[-1] = Layers(out[-1].ops + p.ops)
        else:
            out.append(p)
    return out


def _confirm(model: nn.Module, ir: Lowered, x: torch.Tensor | None) -> None:
    """The IR computes the model's logits (a surrogate: on the clean input, where it is exact)."""
    if ir.adaptive:
        probes = x
    else:
        g = torch.Generator(device="cpu").manual_seed(0)
        probes = torch.rand((2, *ir.input_shape), generator=g).to(ir.device, ir.dtype)
    with torch.no_grad():
        want = model(probes)
        got = ir.forward(probes)
    scale = 1.0 + float(want.abs().max())
    if got.shape != want.shape or float((got - want).abs().max()) > CHAIN_RTOL * scale:
        diff = float((got - want).abs().max()) if got.shape == want.shape else float("nan")
        raise UnsupportedLayerError(
            f"the layers of {type(model).__name__} in registration order do not compute its forward (logits differ "
            f"by {diff:.3g}); certify a model that is a chain of supported layers and models.ODEBlock"
            + ("; a forward that calls odeint directly needs its field wrapped in models.ODEBlock(field, solver)"
               if "odeint" in _source(model) else ""))


def _source(model: nn.Module) -> str:
    try:
        return inspect.getsource(type(model))
    except (OSError, TypeError):
        return ""


class LoweredModule(nn.Module):
    """The IR as a module (logits out), e.g. the fixed-step surrogate an attack must target.

    The source model is registered as a submodule so that ``parameters()`` and the device
    are the model's; ``forward`` runs the IR.
    """

    def __init__(self, ir: Lowered, source: nn.Module) -> None:
        super().__init__()
        self.ir = ir
        self.source = source
        self.input_shape = ir.input_shape
        self.num_classes = ir.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ir.forward(x)
