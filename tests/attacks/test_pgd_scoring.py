"""PGD scores its result without a repeated pass only when every returned point is a misclassified iterate."""

import torch

from attacks import PGD
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
    assert len(calls) == 5  # one pass per step, no scoring pass
    with torch.no_grad():
        assert (m(res.x_adv).argmax(1) != y).all()  # the skipped pass would have said the same


def test_a_failed_example_forces_the_scoring_pass():
    m, calls = _model_and_calls()
    x = torch.rand(8, 1, 6, 6)
    y = m(x).argmax(1)
    calls.clear()
    res = PGD(m, eps=1e-4, steps=5)(x, y)
    assert not res.success.all()
    assert len(calls) == 6  # five steps and the scoring pass
    with torch.no_grad():
        assert torch.equal(res.success, m(res.x_adv).argmax(1) != y)
