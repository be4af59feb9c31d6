"""``bench/protection.py``: the image transforms, an outside ONNX model, and a smoke run whose
tables hold sane figures (an exported model agrees with the committed one it came from)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench import protection
from services.kernels.models import load_classifier

pytestmark = pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning",
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning",
    "ignore:The feature will be removed:DeprecationWarning",
)
PERMUTATION = (2, 0, 1)
"""Output i of the exported model is class PERMUTATION[i]: the label map must undo it."""


def faces(n: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=generator).float() / 127.5 - 1


def test_8bit_rounding_keeps_the_range_and_lands_on_levels() -> None:
    out = protection.to_8bit(faces() * 1.2)
    levels = (out + 1) * 127.5
    assert out.min() >= -1 and out.max() <= 1
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_jpeg_changes_the_pixels_less_at_a_higher_quality() -> None:
    x = protection.to_8bit(torch.nn.functional.avg_pool2d(faces(), 3, 1, 1))
    err90 = float((protection.transform(x, "JPEG 90") - x).abs().mean())
    err75 = float((protection.transform(x, "JPEG 75") - x).abs().mean())
    assert 0 < err90 < err75


def test_every_transform_keeps_shape_and_range_and_changes_the_pixels() -> None:
    x = protection.to_8bit(faces())
    for name in protection.TRANSFORMS:
        out = protection.transform(x, name)
        assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1, name
        assert torch.equal(out, x) == (name == "none"), name


def test_the_shift_moves_the_picture_right_and_down() -> None:
    x = faces(1)
    out = protection.shift(x, 2)
    assert torch.equal(out[..., 2:, 2:], x[..., :-2, :-2])
    assert torch.equal(out[..., 0, 5], out[..., 2, 5])  # the top edge repeated


class Permuted(nn.Module):
    """A committed classifier whose outputs come out in another order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, list(PERMUTATION)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package (a dev dep)")
    path = tmp_path_factory.mktemp("onnx") / "vgg.onnx"
    torch.onnx.export(
        Permuted(load_classifier("unauth-vgg")), (torch.zeros(1, 3, 32, 32),), str(path),
        dynamo=False, input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
    )  # fmt: skip
    return path


def test_an_exported_model_predicts_like_the_committed_one(exported: Path) -> None:
    outside = protection.OnnxClassifier(
        exported, "pose", 32, np.full(3, 0.5), np.full(3, 0.5), PERMUTATION
    )
    x = faces(8)
    assert torch.equal(outside.predict(x), load_classifier("unauth-vgg").predict(x))


def rows_of(out: str, title: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the markdown table under the line starting with ``title``."""
    lines = out[out.index("\n" + title) :].splitlines()[3:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    end = next((i for i, c in enumerate(cells) if len(c) < 2), len(cells))
    return cells[0], cells[2:end]


def pair(cell: str) -> tuple[float, float]:
    before, after = cell.split(" → ")
    return float(before), float(after)


def test_a_quick_run_prints_sane_tables_and_writes_the_plot(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "protection.png"
    assert protection.main([
        "--quick", "--images", "16", "--fmd-images", "16", "--steps", "1",
        "--time-images", "1", "--adaptive-images", "16", "--adaptive-steps", "2",
        "--adaptive-curve", "4,8", "--curve-max-steps", "2",
        "--attacker", str(exported), "--model-labels", "pose",
        "--model-label-map", ",".join(map(str, PERMUTATION)), "--plot", str(plot),
    ]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("command: python -m bench.protection --quick")
    header, rows = rows_of(out, "accuracy, original → protected")
    assert [r[0] for r in rows] == ["fast", "FMD-1", "FMD-1 alone"]
    onnx = header.index("onnx:vgg")
    for row in rows:
        for cell in row[2 : header.index("PSNR dB")]:
            assert all(0.0 <= v <= 1.0 for v in pair(cell))
        assert row[onnx] == row[header.index("unauth-vgg")]
        assert math.isfinite(float(row[-2])) and 0 < float(row[-1]) <= 1
        assert pair(row[2])[0] >= 0.75  # the authorized model on the originals
    _, times = rows_of(out, "time per image (ms)")
    assert all(float(v) > 0 for r in times for v in r[1:3])
    header, robust = rows_of(out, "robustness:")
    assert header[-1] == "onnx:vgg"  # every same-task model has a column, the outside ones too
    assert all(r[-1] == r[header.index("unauth-vgg")] for r in robust)
    assert {(r[0], r[1]) for r in robust} == {
        (m, t) for m in ("fast", "FMD-1") for t in protection.TRANSFORMS
    } | {("FMD-1 alone", "none")}
    _, adaptive = rows_of(out, "adaptive:")
    assert [r[0] for r in adaptive] == ["fast", "FMD-1"]
    assert all(0.0 <= float(r[2]) <= 1.0 for r in adaptive)
    _, curve = rows_of(out, "adaptive curve:")
    assert [(r[0], r[1]) for r in curve] == [("0", "0"), ("4", "2"), ("8", "2")]
    assert all(0.0 <= float(v) <= 1.0 for r in curve for v in r[2:4])
    assert "faces: synthfaces seed 17 (held out: tuned on seed 7)" in out
    assert "onnx:vgg (ONNX)" in out.split("in no surrogate's architecture:")[1].splitlines()[0]
    _, targets = rows_of(out, "targets:")
    assert [(r[0], r[1]) for r in targets] == [
        (m, t) for m in ("fast", "FMD-1") for t in protection.TARGET_TRANSFORMS
    ] + [("FMD-1 alone", "none")]
    assert all(r[3] in ("yes", "no") and r[5] in ("yes", "no") for r in targets)
    assert re.search(r"\nfast: \d+x faster than FMD-1( alone)? at batch 16", out)
    _, tradeoff = rows_of(out, "trade-off:")
    assert {r[0] for r in tradeoff} == {"fast", "FMD-1", "FMD-1 alone"}
    assert tradeoff[0][2] == "1.0x" and all(float(r[2][:-1]) >= 1 for r in tradeoff)
    assert [float(r[1]) for r in tradeoff] == sorted(float(r[1]) for r in tradeoff)
    assert plot.stat().st_size > 1000
    assert re.search(r"λ = [\d.]+, feature layer \w+", out)
    assert "surrogates surrogate-resnet,surrogate-vgg,surrogate-mlpmixer (μ = 1)" in out


def test_report_faces_are_held_out_and_attacker_is_model() -> None:
    """The report seed is not the tuning seed by default, and may not be faces a model
    learned from; ``--attacker`` is ``--model`` under another name."""
    args = protection.parse(["--attacker", "a.onnx", "--model", "b.onnx", "--model-labels", "pose"])
    assert args.faces_seed != protection.TUNING_SEED and args.model == [
        Path("a.onnx"),
        Path("b.onnx"),
    ]
    for seed in ("0", "3", "8"):
        with pytest.raises(SystemExit):
            protection.parse(["--faces-seed", seed])
    args = protection.parse(["--adaptive-curve", "16,64,256,1024,4096"])
    assert [protection.curve_steps(args, n) for n in args.adaptive_curve] == [50, 50, 50, 160, 500]


def test_a_tenant_task_other_than_pose_is_scored_against_its_own_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Protected for the smiling classifier: the same-task columns are the smiling models,
    the pose models are another task, FMD attacks the smiling surrogates, and with no
    generator trained for it there is no fast mode."""
    assert protection.main([
        "--authorized", "task-smiling-resnet", "--images", "8", "--fmd-images", "8",
        "--steps", "1", "--no-alone", "--no-robustness", "--time-images", "1",
        "--adaptive-images", "8", "--adaptive-steps", "1", "--plot", str(tmp_path / "p.png"),
    ]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "authorized: task-smiling-resnet (smiling);" in out
    assert "fast mode: none (no generator for it)" in out
    assert re.search(
        r"surrogates surrogate-smiling-resnet,surrogate-smiling-vgg,surrogate-smiling-mlpmixer ",
        out,
    )
    header, rows = rows_of(out, "accuracy, original → protected")
    assert [r[0] for r in rows] == ["FMD-1"]
    same = header[3 : header.index("same-task avg")]
    assert set(same) == {"attacker-smiling-resnet", "attacker-smiling-vgg", "unauth-smiling-vit"}
    assert "unauth-vgg" not in header  # pose: another task, in the other-task average
    assert "adaptive: attacker-smiling-vgg fine-tuned" in out
    with pytest.raises(SystemExit, match="trained for task-resnet"):
        protection.main(["--authorized", "task-smiling-resnet", "--protector", "protector"])
