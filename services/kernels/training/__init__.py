"""Training loops: a generic resumable loop and one entry point per model kind."""

from services.kernels.training.ema import EMA
from services.kernels.training.loop import TrainConfig, Trainer, TrainResult, format_table

__all__ = ["EMA", "TrainConfig", "TrainResult", "Trainer", "format_table"]
