"""
Models and their lifecycle: network definitions and training (PyTorch), ONNX export, TensorRT
engine builds with manifests, the engine registry, and runtime backends behind one interface.

Knows nothing of Ray or Redis. TensorRT is imported only in `skyblink.engines._trt`; torch,
onnx and onnxruntime only where a function needs them, so importing this package is cheap.
"""

from .catalog import MODEL_VERSIONS, ModelNotShippedError, load_card, onnx_path
from .channels import write_trusted_manifest
from .manifest import EngineManifest, ProfileSpec
from .registry import DeviceInfo, EngineNotFoundError, EngineRegistry, EngineRequest, current_device
from .trust import IntegrityError, TrustedManifest

__all__ = [
    "MODEL_VERSIONS",
    "DeviceInfo",
    "EngineManifest",
    "EngineNotFoundError",
    "EngineRegistry",
    "EngineRequest",
    "IntegrityError",
    "ModelNotShippedError",
    "ProfileSpec",
    "TrustedManifest",
    "current_device",
    "load_card",
    "onnx_path",
    "write_trusted_manifest",
]
