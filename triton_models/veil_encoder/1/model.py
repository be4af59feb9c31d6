"""Semantic encoder of the diffusion autoencoder.

IMAGE (B, 3, R, R) in [-1, 1] → Z (B, z_dim): ``DiffAE.encode``.

Weights come from the model store (config parameters ``store``, ``model_name``; ``threads``
sets torch's intra-op threads, empty = torch's default); missing
weights fail ``initialize`` with the reason. Bad requests get an INVALID_ARG error in their
own response; the other requests of the batch are served.
"""

from services.serving.triton_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
