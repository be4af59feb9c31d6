"""Fast protection: the feed-forward generator trained with FMD's objective.

IMAGE → PROTECTED, FEATURE_DISTORTION: one pass of ``services.kernels.protector`` (‖δ‖∞ ≤ 2ε
by construction), and the feature distortion it achieved on the authorized classifier its
store entry names (loaded beside it, refused unless its SHA-256 is the one it was trained
against). Every request batches with every other.

Weights come from the model store (config parameters ``store``, ``model_name``; ``threads``
sets torch's intra-op threads, empty = torch's default); missing weights fail ``initialize``
with the reason. Bad requests get an INVALID_ARG error in their own response; the other
requests of the batch are served.
"""

from services.serving.triton_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
