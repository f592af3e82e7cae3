"""Typer commands: thin wrappers with lazy imports (a query never imports torch)."""
