"""PyTorch side: backbones, the multi-view model, the FTSPL loss and loop.

Uses ``ftspl.engine`` for loading, rendering and preprocessing so train and serve
never drift.
"""
