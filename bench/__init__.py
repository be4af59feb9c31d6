"""Benchmarks that print tables (not tests): run each as ``python -m bench.<name>``."""
