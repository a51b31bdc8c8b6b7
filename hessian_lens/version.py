"""The package's version (one place: the package, run manifests and the CLI read it)."""

__version__ = "0.3.0"
