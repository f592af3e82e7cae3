"""Torch-free runtime: loading, rendering, preprocessing, ONNX encoders, index, metrics.

Importing this package must never import torch (tested): a query pays only for
numpy, onnxruntime, hnswlib and SQLite. Submodules are imported on demand.
"""
