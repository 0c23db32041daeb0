"""Models: Neural ODE nets, matched ResNets, LeNet-5, data and the model zoo."""

from __future__ import annotations

from typing import Any

from .activity import field_activity as field_activity
from .base import Classifier as Classifier
from .base import ModelInputError as ModelInputError
from .data import DATASETS as DATASETS
from .data import DataError as DataError
from .data import data_root as data_root
from .data import load_dataset as load_dataset
from .download import DownloadError as DownloadError
from .download import download_dataset as download_dataset
from .fields import ChenField as ChenField
from .fields import ConcatConv2d as ConcatConv2d
from .fields import FIELDS as FIELDS
from .fields import VerifiableField as VerifiableField
from .gains import GainsODENet as GainsODENet
from .lenet import MLP as MLP
from .lenet import LeNet5 as LeNet5
from .odenet import ODEBlock as ODEBlock
from .odenet import ODENet as ODENet
from .odenet import SolverStepLimitError as SolverStepLimitError
from .randomized import REJECT as REJECT
from .randomized import RandomizationError as RandomizationError
from .randomized import ToleranceRandomized as ToleranceRandomized
from .randomized import VoteResult as VoteResult
from .resnet import ResNet as ResNet
from .solver import ADAPTIVE_METHODS as ADAPTIVE_METHODS
from .solver import CAS_METHODS as CAS_METHODS
from .solver import FIXED_METHODS as FIXED_METHODS
from .solver import SolverConfig as SolverConfig
from .solver import SolverConfigError as SolverConfigError

#: CLI / checkpoint name -> model class.
MODELS: dict[str, type[Classifier]] = {"ode": ODENet, "resnet": ResNet, "lenet5": LeNet5, "mlp": MLP,
                                       "gains": GainsODENet}


class UnknownArchitectureError(ValueError):
    """An architecture name that is not in :data:`MODELS`."""


def build_model(arch: str, **config: Any) -> Classifier:
    """Instantiate ``MODELS[arch](**config)``.

    Raises:
        UnknownArchitectureError: ``arch`` is not a known architecture.
    """
    if arch not in MODELS:
        raise UnknownArchitectureError(f"unknown architecture {arch!r}; choose one of {', '.join(MODELS)}")
    return MODELS[arch](**config)


__all__ = [
    "DATASETS", "DataError", "DownloadError", "data_root", "download_dataset", "load_dataset",
    "ADAPTIVE_METHODS", "CAS_METHODS", "FIELDS", "FIXED_METHODS", "MLP", "MODELS", "ChenField", "Classifier", "ConcatConv2d", "GainsODENet",
    "LeNet5", "ModelInputError", "ODEBlock", "ODENet", "ResNet", "SolverConfig",
    "SolverConfigError", "SolverStepLimitError", "UnknownArchitectureError", "VerifiableField", "field_activity",
    "build_model", "REJECT", "RandomizationError", "ToleranceRandomized", "VoteResult",
]
