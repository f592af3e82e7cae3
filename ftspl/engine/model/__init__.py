"""Model: the exported manifest, the encoder's input transform, onnxruntime sessions and their graph cache."""
