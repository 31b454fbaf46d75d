"""Offline bootstrap and mirror node for air-gapped Kubernetes clusters."""

__version__ = "0.1.0"
