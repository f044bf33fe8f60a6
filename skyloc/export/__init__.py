"""Export: ONNX of `embed` with metadata, parity verification, TensorRT engines."""
