"""Shared runtime of every Veil service: settings, auth, errors, health, metrics, images."""
