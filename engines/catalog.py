"""
The models shipped with skyblink: where their ONNX graphs, weights and model cards are.

Layout (package data, under 20 MB in all)::

    engines/models/<name>/model.fp32.onnx   model.fp16.onnx   weights.pt   card.json

Nothing is downloaded: the models are trained here on simulated nights (`skyblink train`) and
shipped in the package. ``card.json`` records the sha256 of each ONNX graph and of the weights;
`onnx_path` and `load_network` check them before handing a file out (`IntegrityError`).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skyblink.lazy_import import lazy_module

from .trust import verify_file

if TYPE_CHECKING:
    import torch

    from . import networks
else:
    # torch is only needed by the torch backend and training; the driver reads cards and paths.
    torch = lazy_module("torch")
    networks = lazy_module("skyblink.engines.networks")

__all__ = ["MODEL_VERSIONS", "ModelNotShippedError", "load_card", "load_network", "model_dir", "onnx_path"]

#: Version of each trained network; bumped when its architecture or training changes.
MODEL_VERSIONS = {"detector": "2.0", "classifier": "1.0", "survey_classifier": "1.1"}

#: The network class of each model (`skyblink.engines.networks`); its card's ``architecture`` holds the arguments.
_NETWORKS = {"detector": "Detector", "classifier": "Classifier", "survey_classifier": "BraaiClassifier"}


class ModelNotShippedError(FileNotFoundError):
    """A model's files are not in the package (not trained yet, or a partial install)."""


def model_dir(name: str, root: Path | None = None) -> Path:
    """Return the folder of a shipped model (or of ``root / name`` when ``root`` is given)."""
    if root is not None:
        return Path(root) / name
    return Path(str(resources.files("skyblink.engines") / "models" / name))


def _require(path: Path, name: str) -> Path:
    if not path.is_file():
        msg = f"model {name!r}: {path} is missing; train it with `skyblink train {name}`"
        raise ModelNotShippedError(msg)
    return path


def onnx_path(name: str, precision: str = "fp32", root: Path | None = None) -> Path:
    """
    Return the ONNX graph of a model in ``precision`` (fp32 or fp16), checked against its card.

    Raises
    ------
    ModelNotShippedError
        The graph is not there.
    IntegrityError
        Its sha256 differs from the one in ``card.json``.
    """
    path = _require(model_dir(name, root) / f"model.{precision}.onnx", name)
    return verify_file(path, _card_sha256(name, root, "onnx", precision), what=f"{name} {precision} in its card.json")


def _card_sha256(name: str, root: Path | None, *keys: str) -> str | None:
    """The sha256 a model card records under ``keys`` (None when the card or the entry is absent)."""
    card_path = model_dir(name, root) / "card.json"
    if not card_path.is_file():
        return None
    node: Any = json.loads(card_path.read_text())
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    sha = node.get("sha256") if isinstance(node, dict) else None
    return sha if isinstance(sha, str) else None


def load_card(name: str, root: Path | None = None) -> dict[str, Any]:
    """Return a model's card (data, hyperparameters, validation metrics, cost)."""
    return json.loads(_require(model_dir(name, root) / "card.json", name).read_text())


def load_network(name: str, root: Path | None = None) -> Any:
    """
    Return the torch network of a shipped model with its trained weights, in eval mode.

    Raises
    ------
    ModelNotShippedError
        The weights are not in the package.
    IntegrityError
        The weights' sha256 differs from the one in ``card.json``.
    """
    card = load_card(name, root)
    network = getattr(networks, _NETWORKS[name])(**card["architecture"])
    weights = _require(model_dir(name, root) / "weights.pt", name)
    verify_file(weights, _card_sha256(name, root, "weights"), what=f"{name} weights in its card.json")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    return network.eval()
