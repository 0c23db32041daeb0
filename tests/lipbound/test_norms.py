"""One definition of the norm names: lipbound.norms, used by attacks and lipbound alike."""

from __future__ import annotations

import math

import pytest

import attacks
import lipbound
from attacks import AttackError, LpBall
from lipbound import LipschitzError, layer_bound
from lipbound.norms import NORMS, UnknownNormError, canonical_norm


def test_one_tuple_everywhere() -> None:
    assert NORMS == ("inf", "2")
    assert attacks.NORMS is NORMS and lipbound.NORMS is NORMS


@pytest.mark.parametrize("spelling, name", [
    ("inf", "inf"), ("Linf", "inf"), (" l_inf ", "inf"), (math.inf, "inf"),
    ("2", "2"), ("L2", "2"), ("l_2", "2"), (2, "2"), (2.0, "2"),
])
def test_spellings_agree_across_packages(spelling: object, name: str) -> None:
    assert canonical_norm(spelling) == name
    assert attacks.norms.canonical_norm(spelling) == name
    assert LpBall(spelling, 0.1).p == name
    from torch import nn
    assert layer_bound(nn.ReLU(), (3,), spelling).norm == name


@pytest.mark.parametrize("bad", ["1", "l1", 1, True, None, "2.5", math.nan])
def test_one_error_with_package_specific_subclasses(bad: object) -> None:
    with pytest.raises(UnknownNormError, match="unknown norm .*; choose one of inf, 2"):
        canonical_norm(bad)
    with pytest.raises(UnknownNormError) as err:
        LpBall(bad, 0.1)
    assert isinstance(err.value, AttackError) and isinstance(err.value, attacks.UnknownNormError)
    from torch import nn
    with pytest.raises(UnknownNormError) as err:
        layer_bound(nn.ReLU(), (3,), bad)
    assert isinstance(err.value, LipschitzError)
