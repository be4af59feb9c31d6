"""Each method's options: known keys with a default and a line of doc; typed parsing.

Options arrive as strings (they cross the wire as a map); a key no method knows is
:class:`InvalidArgument` naming the known ones, a value of the wrong type likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class Option:
    default: int | float
    doc: str


COMMON = {
    "seed": Option(0, "seed of every random draw (initialisation, batches, subsamples)"),
}
SPECS: dict[str, dict[str, Option]] = {
    "retrain": {
        **COMMON,
        "steps": Option(1000, "optimisation steps when the budget names none"),
        "batch_size": Option(64, "images per step"),
        "lr": Option(1e-3, "AdamW learning rate"),
        "ema_decay": Option(0.999, "the returned model is this EMA of the weights"),
    },
    "finetune": {
        **COMMON,
        "steps": Option(200, "optimisation steps when the budget names none"),
        "batch_size": Option(64, "images per step"),
        "lr": Option(5e-4, "AdamW learning rate"),
    },
    "feature": {
        **COMMON,
        "steps": Option(300, "head-repair steps when the budget names none"),
        "fit_samples": Option(4000, "revised samples the eraser and the head are fitted on"),
        "batch_size": Option(256, "cached feature rows per repair step"),
        "lr": Option(1e-2, "Adam learning rate of the head repair"),
        "distill": Option(0.5, "weight of distillation from the old model (1 − it: labels)"),
        "temperature": Option(2.0, "distillation temperature"),
        "shift_std": Option(2.0, "margin (in stds) keeping erased units above the ReLU"),
    },
    "scrub": {
        **COMMON,
        "steps": Option(200, "optimisation steps (max and min) when the budget names none"),
        "batch_size": Option(64, "images per step"),
        "lr": Option(1e-4, "AdamW learning rate"),
        "max_fraction": Option(0.5, "share of the steps during which max-steps are taken"),
        "min_per_max": Option(3, "min-steps (retain set) after each max-step (forget set)"),
        "alpha": Option(1.0, "weight of the teacher KL on the retain set"),
        "gamma": Option(1.0, "weight of the task cross-entropy on the retain set"),
        "temperature": Option(4.0, "distillation temperature"),
    },
}


def method_options(method: str) -> dict[str, str]:
    """Known option keys of ``method`` → "doc (default X)"."""
    spec = _spec(method)
    return {key: f"{opt.doc} (default {opt.default})" for key, opt in spec.items()}


def _spec(method: str) -> dict[str, Option]:
    if method not in SPECS:
        raise InvalidArgument(
            f"unknown method {method!r}; known: {list(SPECS)}", details={"known": ",".join(SPECS)}
        )
    return SPECS[method]


def parse_options(method: str, options: Mapping[str, str]) -> dict[str, float]:
    """Typed values of every option of ``method`` (defaults filled in)."""
    spec = _spec(method)
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise InvalidArgument(
            f"unknown options {unknown} for {method}; known: {sorted(spec)}",
            details={"known": ",".join(sorted(spec))},
        )
    values: dict[str, float] = {}
    for key, opt in spec.items():
        text = options.get(key)
        if text is None:
            values[key] = opt.default
            continue
        kind = type(opt.default)
        try:
            values[key] = kind(str(text).strip())
        except ValueError:
            raise InvalidArgument(
                f"option {key} of {method} must be {kind.__name__}; got {text!r}"
            ) from None
        if values[key] < 0:
            raise InvalidArgument(f"option {key} of {method} must be >= 0; got {text!r}")
    return values
