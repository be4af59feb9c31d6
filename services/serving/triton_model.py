"""The one ``TritonPythonModel`` behind every model in ``triton_models/``.

Each ``triton_models/<model>/1/model.py`` imports this class; what differs between the
models (tensors, kernel) comes from ``services.serving.contract.MODELS`` by the model's
name and from ``build_kernel``. Shaped after python_backend's ``examples/add_sub``:
``initialize`` / ``execute`` / ``finalize``, one response per request, errors in the
response; an optional input a request leaves out (``TIME_BUDGET_S``, ``ROBUSTNESS``) is
simply absent from its arrays. Weights come from the model store (config parameters
``store``, ``model_name``; ``threads`` sets torch's intra-op threads, empty = torch's
default). A ``KIND_GPU`` instance runs its kernel on the GPU Triton assigned to it
(``cuda:<model_instance_device_id>``), a ``KIND_CPU`` one on the CPU; missing weights fail
``initialize`` with the reason. A bad request gets an INVALID_ARG error in its own
response; the other requests of the batch are served. Importable only inside Triton's
python backend stub (``triton_python_backend_utils``).
"""

import json
import traceback

import torch
import triton_python_backend_utils as pb_utils

from services.common.errors import InvalidArgument, VeilError
from services.serving.batch import execute_batched
from services.serving.contract import MODELS
from services.serving.entries import version_entry
from services.serving.loading import build_kernel, instance_device, resolve_store


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.spec = MODELS[args["model_name"]]
        if params.get("threads"):
            torch.set_num_threads(int(params["threads"]))
        entry = version_entry(params["model_name"], int(args["model_version"]))
        self.kernel = build_kernel(
            self.spec.name,
            resolve_store(params.get("store", "")),
            entry,
            params.get("feature_layer") or "penultimate",
            instance_device(args),
            [name.strip() for name in params.get("surrogates", "").split(",") if name.strip()],
        )
        # Which code this stub runs: the package the repository was rendered from.
        pb_utils.Logger.log_info(
            f"{args['model_name']} v{args['model_version']}: {__name__} from {__file__}"
        )

    def execute(self, requests):
        inputs = [self._inputs(request) for request in requests]
        responses = []
        for result in execute_batched(self.kernel, inputs):
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=self._error(result)))
                continue
            outputs = [
                pb_utils.Tensor(t.name, result[t.name].astype(t.numpy_dtype))
                for t in self.spec.outputs
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def _inputs(self, request):
        """The request's named arrays; an optional input it left out is absent (the kernel
        uses its default)."""
        arrays = {}
        for spec in self.spec.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is not None:
                arrays[spec.name] = tensor.as_numpy()
        return arrays

    def _error(self, exc):
        if isinstance(exc, InvalidArgument):
            return pb_utils.TritonError(exc.message, pb_utils.TritonError.INVALID_ARG)
        if isinstance(exc, VeilError):
            return pb_utils.TritonError(exc.message, pb_utils.TritonError.INTERNAL)
        pb_utils.Logger.log_error(traceback.format_exc())
        return pb_utils.TritonError(
            f"{self.spec.name}: internal error", pb_utils.TritonError.INTERNAL
        )

    def finalize(self):
        del self.kernel  # free the weights now, not when the stub exits
