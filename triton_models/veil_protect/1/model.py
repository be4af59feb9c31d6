"""Feature map distortion (FMD) against the authorized classifier.

IMAGE, LABEL (−1 = the model's prediction), EPSILON, STEP_SIZE (in [0, 1] pixel units),
ITERATIONS, CE_WEIGHT, TIME_BUDGET_S (optional; ≤ 0 or absent = no limit) → PROTECTED,
FEATURE_DISTORTION, STEPS_RUN: the PGD loop of ``services.kernels.fmd.protect`` runs next to
the model and stops early rather than overrun the budget; requests with the same settings
share one loop.

Weights come from the model store (config parameters ``store``, ``model_name``; ``threads``
sets torch's intra-op threads, empty = torch's default); missing
weights fail ``initialize`` with the reason. Bad requests get an INVALID_ARG error in their
own response; the other requests of the batch are served.
"""

from services.serving.triton_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
