"""The reference cache: ``retrain``'s model and figures, once per revision.

Key: the base model's config and weights digest, the views' data digest (base data,
revision, test set), the attributes, retrain's budget steps and every retrain option
(seed included). A hit costs a file read; entries are written atomically.

    <cache>/<key>/weights.safetensors   <cache>/<key>/reference.json
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from services.kernels.classifiers import Classifier, ClassifierConfig, build_classifier
from services.kernels.unlearning.core import Figures
from services.kernels.unlearning.views import Views


def model_digest(model: Classifier) -> str:
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def reference_key(
    model: Classifier,
    views: Views,
    attributes: Sequence[str],
    values: dict[str, float],
    steps: int | None,
) -> str:
    text = json.dumps(
        {
            "base": model_digest(model),
            "data": views.key(),
            "attributes": list(attributes),
            "steps": steps,
            "options": values,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(root: Path, key: str) -> tuple[Classifier, Figures, dict] | None:
    folder = root / key
    meta_path, weights = folder / "reference.json", folder / "weights.safetensors"
    if not (meta_path.is_file() and weights.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    model = build_classifier(ClassifierConfig.from_dict(meta["config"]))
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), Figures.from_dict(meta["figures"]), dict(meta.get("details", {}))


def save(root: Path, key: str, model: Classifier, figures: Figures, details: dict) -> None:
    folder = root / key
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".weights.tmp"
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "weights.safetensors")
    meta = {"config": model.config.to_dict(), "figures": figures.to_dict(), "details": details}
    tmp = folder / ".reference.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / "reference.json")


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
