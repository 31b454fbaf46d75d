"""Benchmarks: mirror side by side with dnf reposync, skopeo sync and nginx (bench/run.py)."""
