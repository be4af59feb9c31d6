"""Default names and numbers shared by the kernels and the CLI.

Kept free of torch imports so that ``veil --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DIFFAE = "diffae"
DEFAULT_PROBES = "probes"
ARCHITECTURES = ("resnet", "vgg", "mlpmixer", "vit")
ROLES = ("task", "attacker", "unauthorized", "surrogate")
"""What a classifier is for; ``task``, ``unauthorized`` and ``surrogate`` models all predict the
task. Surrogates are the protection's own stand-ins for unknown outside models (trained by the
defender on the authorized model's data); ``unauthorized`` models are the ones it never sees."""
DEFAULT_SURROGATES = ("surrogate-resnet", "surrogate-vgg", "surrogate-mlpmixer")
"""The store entries FMD attacks besides the authorized model (``fmd.Transfer``): the
defender's own models of the task, trained on its data (never the unauthorized ones)."""
DEFAULT_QUANTILE = 0.98
"""Clipping bound C_a: this quantile of |u_aᵀz| over training codes."""
DEFAULT_THRESHOLD = 0.8
"""Held-out accuracy below which an attribute counts as not linearly readable from z."""
DEFAULT_CACHE = Path.home() / ".cache" / "veil" / "datasets"
"""Where rendered datasets are cached as ``.npz``."""
