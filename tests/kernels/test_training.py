"""Training: EMA update, exact resume, and `veil train` / `veil models` end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from services.cli.models import add_models_parser
from services.cli.train import add_train_parser
from services.kernels.checks import KernelInputError
from services.kernels.diffae import DiffAE, DiffAEConfig
from services.kernels.store import ModelStore
from services.kernels.training import EMA, TrainConfig, Trainer
from services.kernels.training.data import load_table
from services.kernels.training.diffae import task_labels, train_diffae

DATA = "synthfaces://?n=64&seed=0"
TINY_ARGS = [
    "--resolution", "16", "--steps", "3", "--batch-size", "4", "--threads", "1",
    "--no-progress", "--checkpoint-every", "2",
]  # fmt: skip


def test_ema_moves_toward_the_weights() -> None:
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.model.weight.fill_(0.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.5))
    assert not ema.model.weight.requires_grad


def _toy_trainer(tmp: Path, steps: int) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    data = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))

    def step_loss(net: nn.Module, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noisy = data[idx] + 0.1 * torch.randn(len(idx), 4, generator=gen)
        return net(noisy).square().mean()

    config = TrainConfig(steps=steps, batch_size=8, lr=1e-2, seed=7, threads=1, progress=False,
                         checkpoint_every=0)  # fmt: skip
    return Trainer(model, step_loss, len(data), config, tmp, {"toy": 1})


def test_resume_gives_the_same_weights_as_one_run(tmp_path: Path) -> None:
    whole = _toy_trainer(tmp_path / "a", 10).run()
    _toy_trainer(tmp_path / "b", 5).run()
    resumed = _toy_trainer(tmp_path / "b", 10).run(resume=True)
    assert resumed.resumed_from == 5 and resumed.steps == 10
    for a, b in zip(
        whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    for a, b in zip(
        whole.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_diffae_resume_is_exact(tmp_path: Path) -> None:
    table = load_table(DATA, 16, cache_dir=None)
    cfg = DiffAEConfig(resolution=16, z_dim=8, encoder_channels=(8,), unet_channels=(8, 8),
                       norm_groups=4, train_timesteps=50, attention=False)  # fmt: skip
    run = TrainConfig(steps=4, batch_size=4, seed=1, threads=1, progress=False, checkpoint_every=2)
    whole = train_diffae(table, cfg, run, tmp_path / "a")
    short = TrainConfig(**{**run.to_dict(), "steps": 2})
    train_diffae(table, cfg, short, tmp_path / "b")
    resumed = train_diffae(table, cfg, run, tmp_path / "b", resume=True)
    for a, b in zip(
        whole.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="veil")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_models_parser(sub)
    return parser.parse_args(argv)


def _veil(argv: list[str]) -> int:
    args = _parse(argv)
    return int(args.handler(args))


def test_veil_train_diffae_then_probes_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, ckpt = tmp_path / "store", tmp_path / "ckpt"
    common = ["--out", str(store), "--data", DATA, "--cache-dir", str(tmp_path / "cache")]
    tiny = ["--z-dim", "8", "--encoder-channels", "32", "--unet-channels", "32,32"]
    argv = ["train", "diffae", *common, *TINY_ARGS, *tiny, "--checkpoint-dir", str(ckpt)]
    assert _veil(argv) == 0
    manifest = json.loads((store / "diffae" / "manifest.json").read_text())
    assert manifest["kind"] == "diffae" and manifest["data"]["n"] == 61
    command = manifest["command"]
    assert command.startswith("veil train diffae --attribute-weight 0.0 --batch-size 4")
    assert "--steps 3" in command
    assert "--command" not in command and "--resume" not in command
    assert _veil(["train", "probes", "--out", str(store), "--data", "synthfaces://?n=64&seed=1",
                  "--threads", "1", "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    probes = ModelStore(store).manifest("probes")
    assert probes.config["attributes"][0] == "male" and "heldout_accuracy" in probes.metrics
    assert _veil(["models", "verify", "--out", str(store)]) == 0
    assert "diffae" in capsys.readouterr().out


def test_veil_train_classifier_writes_a_store_entry(tmp_path: Path) -> None:
    store = tmp_path / "store"
    argv = ["train", "classifier", "--role", "attacker", "--attribute", "smiling", "--arch", "vgg",
            "--width", "8", "--out", str(store), "--data", DATA, "--cache-dir", str(tmp_path),
            "--checkpoint-dir", str(tmp_path / "ckpt"), *TINY_ARGS]  # fmt: skip
    assert _veil(argv) == 0
    manifest = ModelStore(store).manifest("attacker-smiling-vgg")
    assert manifest.config["target"] == "smiling" and manifest.seed == 0
    assert "held-out accuracy" in manifest.metrics
    assert "--augment pipeline" in manifest.command  # the CLI's default, recorded
    assert _veil(["models", "list", "--out", str(store)]) == 0
    assert ModelStore(store).verify() == {"attacker-smiling-vgg": "ok"}


def test_wall_time_adds_up_across_a_resume(tmp_path: Path) -> None:
    first = _toy_trainer(tmp_path, 5).run()
    resumed = _toy_trainer(tmp_path, 10).run(resume=True)
    assert resumed.session_s > 0 and first.wall_s > 0
    assert resumed.wall_s == pytest.approx(first.wall_s + resumed.session_s, rel=0.05, abs=0.05)


def test_init_from_a_checkpoint_warm_starts_a_new_diffae(tmp_path: Path) -> None:
    common = ["--data", DATA, "--cache-dir", str(tmp_path / "cache")]
    tiny = ["--z-dim", "8", "--encoder-channels", "32", "--unet-channels", "32,32"]
    first = ["train", "diffae", "--out", str(tmp_path / "a"), *common, *TINY_ARGS, *tiny,
             "--checkpoint-dir", str(tmp_path / "ckpt-a")]  # fmt: skip
    assert _veil(first) == 0
    checkpoint = sorted((tmp_path / "ckpt-a").glob("ckpt-*.pt"))[-1]
    again = ["train", "diffae", "--out", str(tmp_path / "b"), *common, *TINY_ARGS, *tiny,
             "--checkpoint-dir", str(tmp_path / "ckpt-b"), "--prediction", "epsilon",
             "--init-from", str(checkpoint), "--steps", "0"]  # fmt: skip
    assert _veil(again) == 0
    _, warm = ModelStore(tmp_path / "b").load("diffae")
    start = torch.load(checkpoint, weights_only=True)["ema"]
    assert all(torch.equal(warm[k], start[k]) for k in start)
    manifest = ModelStore(tmp_path / "b").manifest("diffae")
    assert f"--init-from {checkpoint}" in manifest.command
    assert manifest.config["prediction_type"] == "epsilon"


def test_init_from_a_store_entry_records_the_whole_recipe(tmp_path: Path) -> None:
    common = ["--out", str(tmp_path / "store"), "--data", DATA,
              "--cache-dir", str(tmp_path / "cache"), *TINY_ARGS,
              "--z-dim", "8", "--encoder-channels", "32", "--unet-channels", "32,32"]  # fmt: skip
    first = ["train", "diffae", "--name", "stage-a", "--prediction", "epsilon", *common,
             "--checkpoint-dir", str(tmp_path / "ckpt-a")]  # fmt: skip
    assert _veil(first) == 0
    second = ["train", "diffae", "--name", "stage-b", "--init-from", "stage-a", *common,
              "--checkpoint-dir", str(tmp_path / "ckpt-b")]  # fmt: skip
    assert _veil(second) == 0
    store = ModelStore(tmp_path / "store")
    recipe = store.manifest("stage-b").command.split(" && ")
    assert recipe[0] == store.manifest("stage-a").command
    assert "--init-from stage-a" in recipe[1] and "--name stage-b" in recipe[1]


def test_warm_start_adds_an_attribute_head_to_an_unsupervised_model(tmp_path: Path) -> None:
    common = ["--data", DATA, "--cache-dir", str(tmp_path / "cache"), *TINY_ARGS,
              "--z-dim", "8", "--encoder-channels", "32", "--unet-channels", "32,32"]  # fmt: skip
    first = ["train", "diffae", "--out", str(tmp_path / "a"), *common,
             "--checkpoint-dir", str(tmp_path / "ckpt-a")]  # fmt: skip
    assert _veil(first) == 0
    checkpoint = sorted((tmp_path / "ckpt-a").glob("ckpt-*.pt"))[-1]
    second = ["train", "diffae", "--out", str(tmp_path / "b"), *common, "--init-from",
              str(checkpoint), "--attribute-weight", "0.1",
              "--checkpoint-dir", str(tmp_path / "ckpt-b")]  # fmt: skip
    assert _veil(second) == 0
    manifest, weights = ModelStore(tmp_path / "b").load("diffae")
    assert manifest.config["attributes"] == ["male", "old", "dark_skin", "glasses", "smiling"]
    assert manifest.config["attribute_weight"] == 0.1
    assert weights["attribute_head.weight"].shape == (5, 8)


def test_task_labels_follow_the_config() -> None:
    table = load_table(DATA, 16, cache_dir=None)
    base = {"resolution": 16, "z_dim": 8, "encoder_channels": (8,), "unet_channels": (8, 8),
            "norm_groups": 4, "attention": False}  # fmt: skip
    indices = torch.tensor([3, 0, 7])
    assert task_labels(DiffAE(DiffAEConfig(**base)), table, indices) is None
    supervised = DiffAE(DiffAEConfig(**base, task_classes=3, task_weight=0.1))
    assert torch.equal(task_labels(supervised, table, indices), table.tasks[indices])
    with pytest.raises(KernelInputError, match="3 classes"):
        task_labels(DiffAE(DiffAEConfig(**base, task_classes=4)), table, indices)


def test_warm_start_adds_a_task_head_to_an_attribute_supervised_model(tmp_path: Path) -> None:
    common = ["--out", str(tmp_path / "store"), "--data", DATA,
              "--cache-dir", str(tmp_path / "cache"), *TINY_ARGS, "--attribute-weight", "0.1",
              "--z-dim", "8", "--encoder-channels", "32", "--unet-channels", "32,32"]  # fmt: skip
    first = ["train", "diffae", "--name", "base", *common,
             "--checkpoint-dir", str(tmp_path / "ckpt-a")]  # fmt: skip
    assert _veil(first) == 0
    second = ["train", "diffae", "--name", "pose", "--init-from", "base", "--task-weight", "0.3",
              *common, "--checkpoint-dir", str(tmp_path / "ckpt-b")]  # fmt: skip
    assert _veil(second) == 0
    store = ModelStore(tmp_path / "store")
    manifest, weights = store.load("pose")
    assert manifest.config["task_classes"] == 3 and manifest.config["task_weight"] == 0.3
    assert weights["task_head.weight"].shape == (3, 8)
    assert "--task-weight 0.3" in manifest.command.split(" && ")[1]
    assert "task_head.weight" not in store.load("base")[1]
