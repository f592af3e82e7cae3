"""Rendering: meshes to the model's views (headless EGL), the crash-isolated render worker, previews and contact sheets."""
