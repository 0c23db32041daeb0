"""PGD scores its result without a repeated pass only when every returned point is a misclassified iterate."""

import pytest
import torch

from attacks import PGD, AttackError
from models import MLP


def _model_and_calls():
    torch.manual_seed(0)
    m = MLP(hidden=(16,), input_size=6).eval()
    calls = []
    m.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    return m, calls


def test_all_successful_iterates_are_not_scored_twice():
    m, calls = _model_and_calls()
    x = torch.rand(8, 1, 6, 6)
    y = m(x).argmax(1)
    calls.clear()
    res = PGD(m, eps=1.0, steps=5, step_size=0.5)(x, y)
    assert res.success.all()
    # the reference pass on the clean inputs, then at most 5 steps; broken examples stop; no scoring pass
    assert calls[0] == len(x) and len(calls) <= 6 and sum(calls[1:]) < 5 * len(x)
    with torch.no_grad():
        assert (m(res.x_adv).argmax(1) != y).all()  # the skipped pass would have said the same


def test_a_failed_example_forces_the_scoring_pass():
    m, calls = _model_and_calls()
    x = torch.rand(8, 1, 6, 6)
    y = m(x).argmax(1)
    calls.clear()
    res = PGD(m, eps=1e-4, steps=5)(x, y)
    assert not res.success.all()
    assert len(calls) == 7  # the reference pass on the clean inputs, five steps and the scoring pass
    with torch.no_grad():
        assert torch.equal(res.success, m(res.x_adv).argmax(1) != y)


def _reference_pgd(m, x, y, eps, steps, alpha, x0):
    """Every example runs every step from x0; returns (first misclassified iterate else final, final)."""
    xa, first, done = x0.clone(), x0.clone(), torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        logits = m(xa)
        g, = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y, reduction="sum"), xa)
        ok = (logits.argmax(1) != y) & ~done
        first[ok] = xa.detach()[ok]
        done |= ok
        xa = (x + (xa.detach() + alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    first[~done] = xa[~done]
    return first, xa


@pytest.mark.parametrize("output", ["best", "last"])
def test_output_equals_a_full_step_reference(output: str):
    """best: the first misclassified iterate (else the final one), broken examples stop iterating;
    last: the final iterate of every example after every step, then one scoring pass."""
    m, calls = _model_and_calls()
    x = torch.rand(32, 1, 6, 6)
    y = m(x).argmax(1)
    first, final = _reference_pgd(m, x, y, 0.1, 8, 0.02, x)
    calls.clear()
    res = PGD(m, eps=0.1, steps=8, step_size=0.02, random_start=False, output=output)(x, y)
    assert 0 < int(res.success.sum()) < len(x)  # a mix of broken and unbroken examples
    assert torch.allclose(res.x_adv, first if output == "best" else final, atol=1e-6)
    if output == "best":
        assert sum(calls[1:]) < 8 * len(x)  # after the reference pass on the clean inputs
    else:
        assert calls == [len(x)] * 10  # the reference pass on the clean inputs, 8 steps, the scoring pass
    with torch.no_grad():
        assert torch.equal(res.success, m(res.x_adv).argmax(1) != y)


def test_unknown_output_is_refused():
    m, _ = _model_and_calls()
    with pytest.raises(AttackError, match="unknown PGD output 'final'"):
        PGD(m, eps=0.1, output="final")


def test_points_found_under_the_attack_solver_are_scored_under_the_models_own():
    """An attack run with ``attack_solver`` and no ``eval_solver`` is scored by the model's own solver:
    the iterates it found misclassified under the attack solver are not taken on trust."""
    from models import SolverConfig
    from models.zoo import load

    from models.data import load_dataset

    model = load("ode")
    x, y = load_dataset("mnist-t10k", "test", n=24)
    res = PGD(model, eps=0.3, steps=10, step_size=0.05, attack_solver=SolverConfig.fixed("euler", 1))(x, y)
    with torch.no_grad():
        real = model(res.x_adv).argmax(1) != y
    assert torch.equal(res.success, real)
