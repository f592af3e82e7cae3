"""torch -> ONNX export, parity checks, and the model manifest."""
