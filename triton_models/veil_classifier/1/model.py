"""The authorized task classifier.

IMAGE (B, 3, R, R) → LOGITS (B, C) and FEATURES (B, F): the feature map named by the
``feature_layer`` parameter, flattened.

Weights come from the model store (config parameters ``store``, ``model_name``; ``threads``
sets torch's intra-op threads, empty = torch's default); missing
weights fail ``initialize`` with the reason. Bad requests get an INVALID_ARG error in their
own response; the other requests of the batch are served.
"""

from services.serving.triton_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
