"""Helpers for the tests (not fixtures): real servers, Triton material, accountant clocks."""
