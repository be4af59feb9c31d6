"""The default weights committed under ``services/kernels/weights``: each verifies by
sha256 and loads; each classifier (the unauthorized models of the task included), the
autoencoder and the probes reproduce their recorded figures on fresh data; every recorded
recipe (classifiers, autoencoder) replays on a tiny schedule into the same config."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest
import torch

from services.cli.train import add_train_parser
from services.kernels.defaults import DEFAULT_SURROGATES
from services.kernels.models import load_classifier, load_diffae, load_probes
from services.kernels.store import ModelStore
from services.kernels.training.classifier import accuracy, labels_for
from services.kernels.training.data import load_table
from services.kernels.training.diffae import encode_table, reconstruction

STORE = ModelStore()
MANIFESTS = STORE.list()
FRESH = "synthfaces://?n=600&seed=7"  # a seed no default model was trained on
UNAUTHORIZED = ("unauth-vgg", "unauth-wide-resnet", "unauth-mixer")
"""Models of the task that protection (issue #15) is judged against and never sees."""


def test_defaults_are_committed():
    names = {m.name for m in MANIFESTS}
    assert {"task-resnet", "diffae", "probes"} <= names
    for attribute in ("male", "old", "dark_skin", "glasses", "smiling"):
        assert {f"attacker-{attribute}-vgg", f"attacker-{attribute}-resnet"} <= names
    assert set(UNAUTHORIZED) <= names


def test_unauthorized_models_are_independent_of_the_authorized_one():
    """Authorized-inference protection (Chai et al. 2024, arXiv 2402.09316) must defeat
    black-box models of the same task that it never sees: each unauthorized entry predicts
    the authorized model's labels at its resolution, with another architecture or width,
    another seed and other training faces, and learned the task (>= 95 % held out)."""
    task = STORE.manifest("task-resnet")
    shapes = set()
    for name in UNAUTHORIZED:
        manifest = STORE.manifest(name)
        config = manifest.config
        assert config["role"] == "unauthorized" and config["target"] == task.config["target"]
        for key in ("num_classes", "resolution"):
            assert config[key] == task.config[key], (name, key)
        shapes.add((config["arch"], config["width"]))
        assert manifest.seed != task.seed and manifest.data["uri"] != task.data["uri"]
        assert manifest.metrics["held-out accuracy"] >= 0.95, name
        assert (STORE.path(name) / "weights.safetensors").stat().st_size < 3.5e6, name
    assert len(shapes) == len(UNAUTHORIZED)
    assert (task.config["arch"], task.config["width"]) not in shapes
    assert {arch for arch, _ in shapes} == {"vgg", "resnet", "mlpmixer"}


def test_fmd_surrogates_are_the_defenders_models_not_the_unauthorized_ones():
    """FMD's surrogates (``DEFAULT_SURROGATES``) stand in for outside models, so they must
    not be them: the defender's own faces (the authorized model's training data, which the
    unauthorized models never saw), other seeds and other widths than every unauthorized
    model, one per architecture; each learned the task (>= 95 % held out)."""
    task = STORE.manifest("task-resnet")
    outside = [STORE.manifest(name) for name in UNAUTHORIZED]
    archs = set()
    for name in DEFAULT_SURROGATES:
        manifest = STORE.manifest(name)
        config = manifest.config
        assert config["role"] == "surrogate" and config["target"] == task.config["target"]
        for key in ("num_classes", "resolution"):
            assert config[key] == task.config[key], (name, key)
        assert manifest.data["uri"] == task.data["uri"] and manifest.seed != task.seed
        for other in outside:
            assert manifest.data["uri"] != other.data["uri"] and manifest.seed != other.seed
            shape = (other.config["arch"], other.config["width"])
            assert (config["arch"], config["width"]) != shape
        assert manifest.metrics["held-out accuracy"] >= 0.95, name
        archs.add(config["arch"])
    assert archs == {"vgg", "resnet", "mlpmixer"}


def test_a_second_task_has_its_own_surrogates_and_outside_model():
    """Protection for a tenant's classifier of another task (issue #26, item 5): the
    smiling classifier, the defender's surrogates of that task (its data, other seeds, one
    per architecture, >= 94 % held out) and an outside ViT of that task (other faces,
    another seed)."""
    task = STORE.manifest("task-smiling-resnet")
    assert (task.config["role"], task.config["target"], task.config["num_classes"]) == (
        "task", "smiling", 2
    )  # fmt: skip
    assert "--augment pipeline" in task.command
    archs = set()
    for arch in ("resnet", "vgg", "mlpmixer"):
        manifest = STORE.manifest(f"surrogate-smiling-{arch}")
        assert (manifest.config["role"], manifest.config["target"]) == ("surrogate", "smiling")
        assert manifest.data["uri"] == task.data["uri"] and manifest.seed != task.seed
        assert manifest.metrics["held-out accuracy"] >= 0.94  # the mixer: 0.948
        archs.add(manifest.config["arch"])
    assert archs == {"resnet", "vgg", "mlpmixer"}
    outside = STORE.manifest("unauth-smiling-vit")
    assert (outside.config["role"], outside.config["target"]) == ("unauthorized", "smiling")
    assert outside.data["uri"] != task.data["uri"] and outside.seed != task.seed
    assert outside.metrics["held-out accuracy"] >= 0.9


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.name)
def test_each_default_verifies_and_records_how_it_was_made(manifest):
    assert STORE.verify(manifest.name) == {manifest.name: "ok"}
    assert manifest.command.startswith("veil train ")
    # A domain's fit draws no random numbers (a mean, a covariance, a quantile): no seed.
    assert "--seed" in manifest.command or manifest.kind == "domain"
    assert manifest.metrics, "a default model must record its metrics"


@pytest.mark.slow
@pytest.mark.parametrize(
    "manifest", [m for m in MANIFESTS if m.kind == "classifier"], ids=lambda m: m.name
)
def test_classifier_meets_its_recorded_accuracy(manifest):
    model = load_classifier(manifest.name).eval()
    table = load_table(FRESH, manifest.config["resolution"], cache_dir=None)
    from services.kernels.classifiers import ClassifierConfig

    labels = labels_for(table, ClassifierConfig(**manifest.config))
    recorded = manifest.metrics["held-out accuracy"]
    assert accuracy(model, table, labels) >= recorded - 0.03


@pytest.mark.slow
def test_diffae_reconstructs_fresh_faces_as_recorded():
    """Fresh-x_T and inverted-x_T reconstruction of faces from a seed it never saw, within
    1 dB PSNR / 0.05 SSIM of the figures recorded at training (64 held-out images; 32
    here to keep CI short)."""
    torch.set_num_threads(2)
    model = load_diffae()
    recorded = STORE.manifest("diffae").metrics
    images = load_table(FRESH, model.config.resolution, cache_dir=None).batch(torch.arange(32))
    got = reconstruction(model, images)
    for key in ("fresh x_T PSNR", "inverted x_T PSNR"):
        assert got[key] >= recorded[key] - 1.0, (key, got[key], recorded[key])
    for key in ("fresh x_T SSIM", "inverted x_T SSIM"):
        assert got[key] >= recorded[key] - 0.05, (key, got[key], recorded[key])


@pytest.mark.slow
def test_probes_read_every_attribute_from_fresh_codes():
    model, probes = load_diffae(), load_probes()
    table = load_table(FRESH, model.config.resolution, cache_dir=None)
    predicted = probes.predict(encode_table(model, table))
    for a, name in enumerate(probes.names):
        truth = table.attributes[:, table.attribute_names.index(name)]
        acc = float((predicted[:, a] == truth).float().mean())
        assert acc >= probes.heldout_accuracy[name] - 0.05, (name, acc)


def _reduced(stage: str, tmp: Path, index: int) -> list[str]:
    """One ``veil train`` stage of a recorded recipe, on a tiny schedule and tiny data."""
    argv = shlex.split(stage)[1:]  # drop "veil"
    small = {"--steps": "2", "--batch-size": "2", "--data": "synthfaces://?n=40&seed=0",
             "--threads": "1", "--checkpoint-every": "0"}  # fmt: skip
    for i, token in enumerate(argv[:-1]):
        if token in small:
            argv[i + 1] = small[token]
    return [*argv, "--out", str(tmp / "store"), "--checkpoint-dir", str(tmp / f"ckpt-{index}"),
            "--cache-dir", str(tmp / "cache"), "--no-progress"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "manifest", [m for m in MANIFESTS if m.kind in ("diffae", "classifier")], ids=lambda m: m.name
)
def test_the_recorded_recipe_reproduces_the_model(manifest, tmp_path):
    """Every stage of the manifest's command, on a tiny schedule: the same config comes out
    under the same name (the autoencoder's recipe has three stages, chained by name)."""
    stages = manifest.command.split(" && ")
    parser = argparse.ArgumentParser(prog="veil")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    for index, stage in enumerate(stages):
        args = parser.parse_args(_reduced(stage, tmp_path, index))
        assert args.handler(args) == 0
    rebuilt = ModelStore(tmp_path / "store").manifest(manifest.name)
    assert rebuilt.config == manifest.config
    assert rebuilt.command.count(" && ") == manifest.command.count(" && ")
