"""Kubernetes versions driving the mirror: minors for `$kubernetes_minor`, version ranges,
kubeadm's own image lists, upgrade plans and freshness.

Submodules stay importable on their own (config.py imports `versions` while Config is being
defined), so nothing is imported here.
"""
