"""ftspl: find 3D shapes from a photo (FTSPL training, ONNX serving)."""

__version__ = "0.1.0"
