"""Conditional DDIM decoder of the diffusion autoencoder.

Z (B, z_dim), X_T (B, 3, R, R), STEPS (B, 1) → IMAGE (B, 3, R, R): the whole
deterministic DDIM loop of ``DiffAE.decode`` runs here; requests with the same STEPS
share one forward pass per step.

Weights come from the model store (config parameters ``store``, ``model_name``; ``threads``
sets torch's intra-op threads, empty = torch's default); missing
weights fail ``initialize`` with the reason. Bad requests get an INVALID_ARG error in their
own response; the other requests of the batch are served.
"""

from services.serving.triton_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
