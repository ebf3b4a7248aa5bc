"""
What both sides of the cluster agree on about the networks, without importing any ML package.

The driver (CLI, configuration, cluster driver, reduce, storage, alerts, sim) runs from the base
install, with no torch, onnxruntime, tensorrt or CUDA packages; the workers add them. The class
lists, the stamp edge and the ONNX tensor names are needed on both sides, so they live here, in a
module of the core that imports only the standard library: the workers (the detector's stride),
the engines, the reduce and the evaluation all read them here. `skyblink.engines.networks` (torch)
and `skyblink.engines.manifest` re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from skyblink.stamps import STAMP_SIZE  # the stamp edge, defined with the driver side's core

__all__ = [
    "CLASSIFIER_CLASSES",
    "CLASSIFIER_MODELS",
    "DETECTOR_CLASSES",
    "DETECTOR_STRIDE",
    "IO_NAMES",
    "STAMP_SIZE",
    "ClassifierName",
    "IONames",
]

#: Heatmap channels of the detector, in output order.
DETECTOR_CLASSES = ("static", "transient", "moving", "artifact")
#: Class-probability columns of the classifier, in output order.
CLASSIFIER_CLASSES = ("star", "galaxy", "transient", "variable", "moving", "cosmic_ray", "artifact")
#: The shipped real/bogus networks a night, `skyblink subtract` or `skyblink alerts score` can run:
#: the pipeline's (trained on the simulator) and the one made for survey stamps (real alerts).
ClassifierName = Literal["classifier", "survey_classifier"]
CLASSIFIER_MODELS: tuple[str, ...] = get_args(ClassifierName)
#: The detector's input height and width must be multiples of this.
DETECTOR_STRIDE = 32


@dataclass(frozen=True, slots=True)
class IONames:
    """Input and output tensor names of one network's ONNX graph."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


#: Tensor names of each network's ONNX graph (and of its TensorRT engine), by model name.
IO_NAMES: dict[str, IONames] = {
    "detector": IONames(("tiles",), ("heatmaps", "offsets")),
    "classifier": IONames(("stamps",), ("real_bogus", "class_probs")),
    # The classifier for survey stamps (ZTF, Rubin cutouts): the same contract as the classifier.
    "survey_classifier": IONames(("stamps",), ("real_bogus", "class_probs")),
    "braai": IONames(("stamps",), ("drb",)),
}
