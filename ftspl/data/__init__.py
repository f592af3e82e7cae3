"""Data sets from package registries (never committed): fetchers and class maps."""
