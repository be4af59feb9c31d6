"""Training entry point of the fast-protection generator (:mod:`services.kernels.protector`).

The generator maximises FMD's objective J = MSE(f_feat(x), f_feat(G(x))) − λ·CE(f(G(x)), y)
(:func:`services.kernels.fmd.objective`) averaged over the data, with the authorized model
f frozen and y its own prediction on the clean image: what the fast mode is served with
(no label comes with a request). The generator's weights move; f never does.

Against f alone that does not carry to other models (the unauthorized pose models still
read 0.885–0.94 of the protected faces). So, as robust FMD does (:func:`fmd.protect` with
surrogates and ``robustness``), the config's ``surrogates`` (the defender's own models of
the task) join J with weight μ: +μ·mean_s [MSE(s_feat(D(x)), s_feat(D(v))) + CE(s(D(v)), y)],
D being FMD's input diversity (one draw per step); and with ``robustness`` every step takes
J at one draw v = T(G(x)) of ``pipeline.sample_transform`` (expectation over
transformation, Athalye et al. 2018), while −λ·CE also holds f's label on G(x) itself, as
the service returns it. Without either, J is FMD's alone (the entries written before).

How the packaged recipe was chosen (short runs, batch 8, lr 2e-3, JPEG draws, diversity 4,
warm-started from the generator trained against f alone; unauthorized average on 256 faces
of synthfaces seed 7, chance 0.352; f's clean prediction kept as served / after Pillow JPEG
90 / 75), 400 steps against the packaged ``task-resnet``: μ = 3, λ = 20: 0.637, 0.973 /
0.957 / 0.938; μ = 10: 0.618, 0.953 / 0.906 / 0.855; λ = 40: 0.970 (no protection),
0.992 / 0.988 / 0.980; a CE cap of 4: 0.885. At 4000 steps λ = 26 still left 0.837 while
λ = 20 reached 0.585, 0.977 / 0.969 / 0.926: the CE weight has a cliff between the two.
Without the warm start (against the earlier ``task-resnet``), 300 steps reached 0.924 at lr
1e-3 and 0.979 at 5e-3. The packaged entry is μ = 3, λ = 20 at 12 000 steps (3600 s, one
thread): 0.576, 0.977 / 0.973 / 0.953 there; ``python -m bench.protection --images 256
--fmd-images 16 --steps 100 --fmd-robustness jpeg --no-alone`` (report faces, seed 17,
chance 0.387): same-task average 0.986 → 0.625 (unauth-vgg 0.344, unauth-wide-resnet 0.395,
unauth-vit 0.812, unauth-mixer 0.949: the vit, in no surrogate's architecture, and the
mixer resist),
authorized 0.984 → 0.992, 0.973 / 0.984 after JPEG 90 / 75, 9.1 ms per image at batch 16
against 1570 for robust FMD-100 (173×). Measured 2026-12-07.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from services.common.errors import InvalidArgument
from services.kernels import pipeline
from services.kernels.classifiers import Classifier
from services.kernels.fmd import _diverse, objective
from services.kernels.protector import Protector, ProtectorConfig, build_protector
from services.kernels.training.data import ImageTable
from services.kernels.training.distributed import SINGLE, Distributed
from services.kernels.training.loop import TrainConfig, Trainer, TrainResult, seed_everything

EVAL_ROWS = 512
"""Held-out images the end-of-run figures are measured on."""
EVAL_JPEG = (90, 75)
"""Pillow JPEG qualities the authorized model's kept prediction is also measured after."""


def surrogate_term(
    surrogates: Sequence[Classifier],
    images: torch.Tensor,
    view: torch.Tensor,
    labels: torch.Tensor,
    diversity: int,
    generator: torch.Generator,
    cap: float | None = None,
) -> torch.Tensor:
    """Per image, mean over the surrogates of MSE(s_feat(D(x)), s_feat(D(v))) + CE(s(D(v)), y):
    their penultimate features pushed away and their reading pushed off the authorized
    label (:class:`services.kernels.fmd.Transfer`'s term, plus the feature term), all at one
    input-diversity draw D shared by the original and the view (one pass with gradients per
    surrogate). ``cap``: each CE counts up to it (:attr:`ProtectorConfig.surrogate_cap`)."""
    both = _diverse(torch.cat([images, view]), diversity, generator)
    clean, seen = both[: len(images)].detach(), both[len(images) :]
    terms = []
    for s in surrogates:
        with torch.no_grad():
            target = s.features(clean, "penultimate")
        feats = s.features(seen, "penultimate")
        moved = (feats - target).flatten(1).pow(2).mean(1)
        ce = F.cross_entropy(s.head(feats), labels, reduction="none")
        terms.append(moved + (ce if cap is None else ce.clamp(max=cap)))
    return torch.stack(terms).mean(0)


def protector_loss(
    protector: nn.Module,
    model: Classifier,
    images: torch.Tensor,
    surrogates: Sequence[Classifier] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """−mean J over the batch (the loss the optimiser descends); J as the module docstring
    says, with one draw of the config's ``robustness`` from ``generator`` (seed 0 if None)."""
    config = protector.config
    assert isinstance(config, ProtectorConfig)
    gen = torch.Generator().manual_seed(0) if generator is None else generator
    with torch.no_grad():
        labels = model(images).argmax(1)
        target = model.features(images, config.feature_layer)
    protected = protector(images)
    robust = config.robustness != "none"
    view = pipeline.sample_transform(config.robustness, gen)(protected) if robust else protected
    value, _, _ = objective(model, view, target, labels, config.ce_weight, config.feature_layer)
    if robust:  # the label also holds on the image as returned, not only after the draw
        ce = F.cross_entropy(model(protected), labels, reduction="none")
        value = value - config.ce_weight * ce
    if surrogates and config.surrogate_weight > 0:
        fooled = surrogate_term(
            surrogates, images, view, labels, config.diversity, gen, config.surrogate_cap
        )
        value = value + config.surrogate_weight * fooled
    return -value.mean()


def evaluate_protector(
    protector: Protector,
    model: Classifier,
    table: ImageTable,
    batch: int = 128,
    surrogates: Sequence[Classifier] = (),
) -> dict[str, float]:
    """Authorized accuracy on the protected images (against the labels and against the
    model's clean predictions, also after Pillow's JPEG at :data:`EVAL_JPEG`), its clean
    accuracy, the mean feature distortion, and the surrogates' mean accuracy on the
    protected images (8 bits, as served)."""
    layer = protector.config.feature_layer
    totals: dict[str, float] = {"clean": 0.0, "protected": 0.0, "kept": 0.0, "distortion": 0.0}
    totals |= {f"jpeg {q}": 0.0 for q in EVAL_JPEG} | {"surrogates": 0.0}
    protector.eval()
    model.eval()
    with torch.no_grad():
        for start in range(0, len(table), batch):
            idx = torch.arange(start, min(start + batch, len(table)))
            x, y = table.batch(idx), table.tasks[idx]
            x_adv = protector(x)
            clean, after = model(x).argmax(1), model(x_adv).argmax(1)
            moved = model.features(x_adv, layer) - model.features(x, layer)
            totals["clean"] += float((clean == y).sum())
            totals["protected"] += float((after == y).sum())
            totals["kept"] += float((after == clean).sum())
            totals["distortion"] += float(moved.flatten(1).pow(2).mean(1).sum())
            served = pipeline.quantize(x_adv)
            for q in EVAL_JPEG:
                read = model(pipeline.jpeg(served, q)).argmax(1)
                totals[f"jpeg {q}"] += float((read == clean).sum())
            for s in surrogates:
                totals["surrogates"] += float((s(served).argmax(1) == y).sum()) / len(surrogates)
    n = max(len(table), 1)
    metrics = {
        "authorized clean accuracy": totals["clean"] / n,
        "authorized protected accuracy": totals["protected"] / n,
        "authorized prediction kept": totals["kept"] / n,
        "feature distortion": totals["distortion"] / n,
    }
    metrics |= {f"authorized kept after JPEG {q}": totals[f"jpeg {q}"] / n for q in EVAL_JPEG}
    if surrogates:
        metrics["surrogate protected accuracy"] = totals["surrogates"] / n
    return metrics


def _head(table: ImageTable, rows: int) -> ImageTable:
    return ImageTable(
        table.images[:rows],
        table.attributes[:rows],
        table.tasks[:rows],
        table.attribute_names,
        table.num_task_classes,
        table.uri,
    )


def train_protector(
    train: ImageTable,
    model: Classifier,
    config: ProtectorConfig,
    train_config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    held: ImageTable | None = None,
    surrogates: Sequence[Classifier] = (),
    init: Mapping[str, torch.Tensor] | None = None,
    where: Distributed = SINGLE,
) -> TrainResult:
    """Train a generator against the frozen authorized ``model`` and ``surrogates`` (the
    classifiers ``config.surrogates`` names, in that order; its SHA-256 is in ``config``, so
    a resume against another classifier is refused), from ``init``'s weights if given (a
    warm start: another generator of the same widths and blocks). ``where``: this
    process's rank under ``torchrun``, on CPU (the robustness pipeline runs Pillow)."""
    if where.device.type != "cpu":
        raise InvalidArgument("the protector trains on CPU (gloo under torchrun)")
    if len(surrogates) != len(config.surrogates):
        raise ValueError(f"config names {len(config.surrogates)} surrogates; got {len(surrogates)}")
    seed_everything(train_config.seed)
    protector = build_protector(config)
    if init is not None:
        protector.load_state_dict(dict(init))
    for m in (model, *surrogates):
        m.eval().requires_grad_(False)

    def step_loss(net: nn.Module, indices: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return protector_loss(net, model, train.batch(indices), surrogates, gen)

    def evaluate(ema: nn.Module) -> dict[str, float]:
        assert isinstance(ema, Protector)
        if held is None:
            return {}
        return evaluate_protector(ema, model, _head(held, EVAL_ROWS), surrogates=surrogates)

    run_config = {"model": config.to_dict(), "data": train.uri, "n": len(train)}
    trainer = Trainer(
        protector, step_loss, len(train), train_config, checkpoint_dir, run_config, where
    )
    return trainer.run(resume=resume, evaluate=evaluate)
