"""Ringkeeper: a Kubernetes operator for multi-site, multi-active hospital database rings."""

__version__ = "0.1.0"
