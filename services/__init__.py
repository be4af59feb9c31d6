"""Veil: image-privacy model serving (sanitizer, accountant, unlearning, protection)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("veil")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
