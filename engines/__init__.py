"""Models, ONNX export, TensorRT engine builds, the engine registry and runtime backends (later issues)."""

__all__: list[str] = []
