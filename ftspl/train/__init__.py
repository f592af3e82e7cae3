"""PyTorch side: backbones, the multi-view model, the FTSPL loss and loop.

Uses ``ftspl.engine`` for loading, rendering and preprocessing so train and serve
never drift.

Why ``torch._dynamo`` is imported here: Mesa's llvmpipe (our headless EGL
renderer) and Triton (which torch._dynamo loads, and which torch.optim and the
ONNX exporter import lazily) each bring their own LLVM. Loading Triton *after*
an EGL context exists crashes the process (segfault in libtriton, seen with
torch 2.14.1 + Mesa 22.3); loading it first is safe. So the training layer
loads it before anything can render.
"""

import torch._dynamo  # noqa: F401  (import order matters, see above)
