"""Feature map distortion (FMD) against the authorized classifier.

IMAGE, LABEL (−1 = the model's prediction), EPSILON, STEP_SIZE (in [0, 1] pixel units),
ITERATIONS, CE_WEIGHT, TIME_BUDGET_S (optional; ≤ 0 or absent = no limit), ROBUSTNESS
(optional; 0 none, 1 jpeg, 2 full; absent = none) → PROTECTED, FEATURE_DISTORTION,
STEPS_RUN: the PGD loop of ``services.kernels.fmd.protect`` runs next to the model and stops
early rather than overrun the budget; requests with the same settings share one loop.

Weights come from the model store (config parameters ``store``, ``model_name``; ``threads``
sets torch's intra-op threads, empty = torch's default); missing
weights fail ``initialize`` with the reason. Bad requests get an INVALID_ARG error in their
own response; the other requests of the batch are served.
"""

import importlib
import json
import sys
from pathlib import Path

IMPLEMENTATION = "services.serving.triton_model"
"""The one model class of the package (``veil.services.…`` in the installed wheel)."""


class TritonPythonModel:
    """The class of ``IMPLEMENTATION``, imported from the package named by the config
    parameter ``package_root`` (empty: the tree that holds this repository), which
    ``services.triton.repository`` sets to the package that rendered it: the python
    backend's stub does not read the server's ``PYTHONPATH``."""

    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        root = parameters.get("package_root", {}).get("string_value") or str(
            Path(__file__).resolve().parents[3 + IMPLEMENTATION.split(".").index("services")]
        )
        if sys.path[:1] != [root]:
            sys.path.insert(0, root)
        self.model = importlib.import_module(IMPLEMENTATION).TritonPythonModel()
        self.model.initialize(args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
