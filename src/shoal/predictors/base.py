"""`LatencyPredictor`: what the planner asks of a device (batch-1 latency of sub-models, in ms).

Every predictor is bound to one teacher family (`TeacherConfig.fingerprint()`)
and refuses specs of another. Measured predictors save to a safetensors file
(their numbers) plus a JSON file (what they are); nothing is pickled.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from shoal.errors import ConfigError, DataError
from shoal.models.config import TeacherConfig, config_from_dict
from shoal.predictors.features import Shape
from shoal.utils.io import atomic_save_safetensors, atomic_write_json

Tensors = dict[str, torch.Tensor]


class LatencyPredictor(ABC):
    """Predicts the batch-1 latency (ms) of sub-models of one teacher family on one device.

    Attributes:
        config: The teacher family the predictor was trained for.
        family: `config.fingerprint()`.
        kind: What it is, e.g. "mlp", "flops-linear", "catalog-estimate".
        is_estimate: True for analytic (catalog) predictions, False for measured profiles.
    """

    is_estimate: bool = False
    registry: ClassVar[dict[str, type[LatencyPredictor]]] = {}

    def __init__(self, config: TeacherConfig, kind: str) -> None:
        self.config = config
        self.family = config.fingerprint()
        self.kind = kind

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LatencyPredictor.registry[cls.__name__] = cls

    def predict_ms(self, specs: Sequence[Shape]) -> list[float]:
        """Predicted latency (ms) of each spec (or `SubModelShape`), batched.

        Raises:
            ConfigError: a spec belongs to another teacher family.
        """
        for spec in specs:
            family = getattr(spec, "family", "")
            if family and family != self.family:
                raise ConfigError(
                    f"spec of teacher family {family!r} given to a {self.kind} latency predictor trained for "
                    f"family {self.family!r}; profile the device for this teacher")
        if not specs:
            return []
        return [float(v) for v in self.predict_array(specs)]

    @abstractmethod
    def predict_array(self, shapes: Sequence[Shape]) -> np.ndarray:
        """Predicted latency (ms) of each shape, shape (n,); no family check."""

    def state(self) -> tuple[Tensors, dict[str, Any]]:
        """(tensors, JSON-able description) that `from_state` rebuilds the predictor from."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    @classmethod
    def from_state(cls, config: TeacherConfig, kind: str, tensors: Tensors, meta: dict[str, Any]) -> LatencyPredictor:
        raise NotImplementedError(f"{cls.__name__} cannot be loaded")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, family={self.family!r})"


def save_predictor(predictor: LatencyPredictor, directory: str | Path, stem: str) -> tuple[Path, Path]:
    """Write `<stem>.safetensors` and `<stem>.json` into `directory`, atomically."""
    directory = Path(directory)
    tensors, meta = predictor.state()
    weights, desc = directory / f"{stem}.safetensors", directory / f"{stem}.json"
    atomic_save_safetensors(weights, tensors or {"_empty": torch.zeros(0)},
                            metadata={"family": predictor.family, "kind": predictor.kind})
    atomic_write_json(desc, {"class": type(predictor).__name__, "kind": predictor.kind, "family": predictor.family,
                             "config": predictor.config.to_dict(), "weights": weights.name, "meta": meta})
    return weights, desc


def load_predictor(directory: str | Path, stem: str) -> LatencyPredictor:
    """Read a predictor saved by `save_predictor`.

    Raises:
        DataError: a file is missing or corrupt, or the description does not match the weights.
    """
    directory = Path(directory)
    desc_path = directory / f"{stem}.json"
    try:
        desc = json.loads(desc_path.read_text())
        cls = LatencyPredictor.registry[desc["class"]]
        config = config_from_dict(desc["config"])
        weights = directory / desc["weights"]
    except FileNotFoundError:
        raise DataError(f"predictor description {desc_path} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as exc:
        raise DataError(f"{desc_path} is not a valid predictor description ({type(exc).__name__}: {exc})") from None
    if config.fingerprint() != desc.get("family"):
        raise DataError(f"{desc_path}: family {desc.get('family')!r} does not match its config "
                        f"({config.fingerprint()!r}); the file was altered")
    try:
        from safetensors.torch import load_file

        tensors = load_file(str(weights))
    except Exception as exc:
        raise DataError(f"cannot read predictor weights {weights}: {type(exc).__name__}: {exc}".splitlines()[0]
                        ) from None
    tensors.pop("_empty", None)
    try:
        return cls.from_state(config, desc["kind"], tensors, desc.get("meta", {}))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise DataError(f"{weights} does not match {desc_path.name} ({type(exc).__name__}: {exc})") from None
