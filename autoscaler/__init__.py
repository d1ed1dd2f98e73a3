"""Multi-cloud GPU autoscaler daemon."""

__version__ = "0.1.0"
