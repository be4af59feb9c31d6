"""Triton test material: tiny model repositories written into tmp paths, a store of
random-init tiny models (fixed seeds), copies of ``triton_models/`` pointed at it, free-port
settings, and a check for leftover processes. The real models live in ``triton_models/``.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import torch

from services.kernels.classifiers import ClassifierConfig, build_classifier
from services.kernels.defaults import DEFAULT_SURROGATES
from services.kernels.diffae import DiffAE, DiffAEConfig
from services.kernels.protector import ProtectorConfig, build_protector
from services.kernels.store import ModelStore
from services.serving.contract import CLASSIFIER, MODELS
from services.triton.repository import render
from services.triton.server import TritonServer
from services.triton.settings import REPO_ROOT, TritonSettings

ADD_SUB_CONFIG = """
name: "add_sub"
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

ADD_SUB_MODEL = '''
"""OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1; non-finite input is an error."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.dtypes = [
            pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, name)["data_type"]
            )
            for name in ("OUTPUT0", "OUTPUT1")
        ]

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                error = pb_utils.TritonError("add_sub: inputs must be finite")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            outputs = [
                pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtypes[0])),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(self.dtypes[1])),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def finalize(self):
        pass
'''

VENV_CHECK_CONFIG = """
name: "venv_check"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "ORIGIN" data_type: TYPE_STRING dims: [ 2 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

VENV_CHECK_MODEL = '''
"""Y = 2 X through torch; ORIGIN = where ``services`` and the interpreter prefix come from."""
import sys

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

import services


class TritonPythonModel:
    def initialize(self, args):
        self.origin = np.array([services.__file__, sys.prefix], dtype=object)

    def execute(self, requests):
        responses = []
        for request in requests:
            x = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "X").as_numpy())
            outputs = [
                pb_utils.Tensor("Y", (x * 2).numpy()),
                pb_utils.Tensor("ORIGIN", self.origin),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
'''

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("veil-test: this model is broken on purpose")

    def execute(self, requests):
        return []
"""

BROKEN_ERROR = "veil-test: this model is broken on purpose"


def write_model(repository: Path, name: str, config: str, model: str) -> Path:
    """``<repository>/<name>/config.pbtxt`` and ``<name>/1/model.py``."""
    version = repository / name / "1"
    version.mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(textwrap.dedent(config).lstrip())
    (version / "model.py").write_text(textwrap.dedent(model).lstrip())
    return repository / name


def add_sub_repository(root: Path) -> Path:
    """A repository with only ``add_sub`` (fast to load: no torch import)."""
    write_model(root, "add_sub", ADD_SUB_CONFIG, ADD_SUB_MODEL)
    return root


def broken_repository(root: Path) -> Path:
    """``add_sub`` plus a model whose ``initialize`` raises."""
    add_sub_repository(root)
    write_model(root, "broken", VENV_CHECK_CONFIG.replace("venv_check", "broken"), BROKEN_MODEL)
    return root


def free_port_settings(repository: Path, **overrides: object) -> TritonSettings:
    values: dict[str, object] = {
        "model_repository": repository,
        "grpc_port": 0,
        "http_port": 0,
        "metrics_port": 0,
        "startup_timeout_s": 90.0,
        "shutdown_grace_s": 10.0,
    }
    values.update(overrides)
    return TritonSettings(**values)  # type: ignore[arg-type]


def http_ready(port: int) -> bool:
    """Whether a tritonserver answers ready on HTTP ``port``."""
    import urllib.request

    try:
        url = f"http://127.0.0.1:{port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (a unique tmp path: the server, its stubs)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


TINY_DIFFAE = DiffAEConfig(
    resolution=16,
    z_dim=8,
    encoder_channels=(8,),
    unet_channels=(8, 8),
    norm_groups=4,
    train_timesteps=50,
    attention=False,
)
TINY_CLASSIFIER = ClassifierConfig(num_classes=3, resolution=16, width=8)
DIFFAE_ENTRY, CLASSIFIER_ENTRY, PROTECTOR_ENTRY = "diffae", "task-resnet", "protector"


def tiny_store(root: Path) -> Path:
    """A model store with a random-init tiny DiffAE, task classifier, fast-protection
    generator (against that classifier) and FMD's surrogates (``DEFAULT_SURROGATES``, one
    per architecture) (seed 0)."""
    store = ModelStore(root)
    torch.manual_seed(0)
    diffae = DiffAE(TINY_DIFFAE)
    store.save(DIFFAE_ENTRY, "diffae", diffae.state_dict(), TINY_DIFFAE.to_dict(), seed=0)
    classifier = build_classifier(TINY_CLASSIFIER)
    config = TINY_CLASSIFIER.to_dict()
    saved = store.save(CLASSIFIER_ENTRY, "classifier", classifier.state_dict(), config, seed=0)
    protector_config = ProtectorConfig(
        resolution=16, widths=(4, 8), blocks=1, authorized_sha256=saved.sha256
    )
    protector = build_protector(protector_config).state_dict()
    store.save(PROTECTOR_ENTRY, "protector", protector, protector_config.to_dict(), seed=0)
    for name in DEFAULT_SURROGATES:
        surrogate = replace(TINY_CLASSIFIER, arch=name.removeprefix("surrogate-"), role="surrogate")
        state = build_classifier(surrogate).state_dict()
        store.save(name, "classifier", state, surrogate.to_dict(), seed=0)
    return root


def copy_repository(
    root: Path, store: Path | str, *, models: tuple[str, ...] = tuple(MODELS), batching=True
) -> Path:
    """``triton_models/`` (``models`` only) rendered into ``root/models`` with its ``store``
    parameter set to ``store``; ``batching=False`` drops the ``dynamic_batching`` block."""
    return render(
        REPO_ROOT / "triton_models",
        root / "models",
        parameters={"store": str(store)},
        batching=batching,
        models=models,
    )


def light_triton(root: Path, store: Path | str) -> TritonServer:
    """``veil_classifier`` alone (no diffusers import in its stub: starts in seconds)."""
    repository = copy_repository(root / "repo", store, models=(CLASSIFIER,))
    return TritonServer(free_port_settings(repository, startup_timeout_s=60.0))
