"""Export: ONNX of `embed` with metadata and its parity against PyTorch (needs torch). TensorRT
engines are built by `skyloc.runtime.engine`, on the drone too."""
