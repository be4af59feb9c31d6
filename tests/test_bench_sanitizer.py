"""``bench/sanitizer.py``: the baselines' noise, an outside ONNX attacker, and a smoke run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import sanitizer
from services.kernels.mechanism import calibrate_mu
from services.kernels.models import load_classifier


def faces(n: int = 8, res: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, res, res, 3), dtype=np.uint8)


def test_dp_pix_is_constant_in_each_cell_at_the_colour_scale() -> None:
    out, scale = sanitizer.dp_pix(faces(), epsilon=2.0, block=4, m=16)
    assert scale == pytest.approx(3 * 255 * 16 / (16 * 2.0))
    cells = out.reshape(8, 8, 4, 8, 4, 3)
    assert (cells == cells[:, :, :1, :, :1]).all()


def test_gaussian_on_pixels_uses_the_whole_image_sensitivity() -> None:
    _, sigma = sanitizer.gaussian_pixels(faces(), epsilon=1.0, delta=1e-5)
    assert sigma == pytest.approx(math.sqrt(3 * 32 * 32) / calibrate_mu(1.0, 1e-5))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_an_exported_attacker_predicts_like_the_committed_one(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package (not a dep)")
    model = load_classifier("attacker-male-resnet")
    path = tmp_path / "male.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
        input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
    )  # fmt: skip
    outside = sanitizer.OutsideAttacker(
        path, "male", 32, np.full(3, 0.5), np.full(3, 0.5), threshold=0.0
    )
    pixels = faces(16)
    expected = model.predict(sanitizer.to_tensor(pixels)).numpy()
    assert (outside.predict(pixels) == expected).all()


@pytest.mark.slow
def test_a_quick_run_prints_every_table_and_writes_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "sanitizer.png"
    sanitizer.main([
        "--quick", "--n", "16", "--epsilons", "1", "--steps", "2", "--adaptive-steps", "2",
        "--no-speed", "--plot", str(plot),
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("command: python -m bench.sanitizer --quick")
    for heading in ("calibration", "male: attacker accuracy", "smiling: attacker", "utility"):
        assert heading in out
    for column in ("resnet bal.", "vgg bal.", "balanced"):
        assert column in out
    for row in ("original", "no noise", "keep", "DP-Pix", "Gaussian"):
        assert f"  {row}  " in out
    assert "speed:" not in out
    assert plot.stat().st_size > 1000


def test_balanced_accuracy_is_a_half_for_any_guess_that_ignores_the_image() -> None:
    truth = torch.tensor([0] * 30 + [1] * 10)
    assert sanitizer.balanced_accuracy(torch.zeros(40, dtype=torch.long), truth) == 0.5
    assert sanitizer.balanced_accuracy(torch.ones(40, dtype=torch.long), truth) == 0.5
    assert sanitizer.balanced_accuracy(truth.clone(), truth) == 1.0
    half_right = torch.tensor([0] * 15 + [1] * 15 + [1] * 10)
    assert sanitizer.balanced_accuracy(half_right, truth) == pytest.approx(0.75)


@pytest.mark.slow
def test_the_speed_section_times_whole_release_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sanitizer.main([
        "--quick", "--n", "16", "--epsilons", "1", "--steps", "2", "--adaptive-steps", "2",
        "--speed-batches", "1,2", "--speed-calls", "2", "--plot", str(tmp_path / "s.png"),
    ])  # fmt: skip
    out = capsys.readouterr().out
    speed = out[out.index("speed: whole release calls") :].splitlines()[3:]
    rows = [line.split() for line in speed if line.strip()]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("local", "2", "1", "2"),
        ("local", "2", "2", "2"),
    ]
    assert all(float(r[4]) > 0 and float(r[5]) <= float(r[6]) for r in rows)
