"""The package version, read by setup.cfg and reported in WorkerInstance."""

__version__ = "0.1.0"
