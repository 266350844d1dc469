"""Metrics to TensorBoard and to `MODEL_DIR/metrics.jsonl` (one JSON object per write), from process 0."""

import json
import os
import time
from typing import Mapping

import jax
from clu import metric_writers


class MetricsWriter:
    def __init__(self, model_dir: str, name: str = "train"):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            os.makedirs(model_dir, exist_ok=True)
            self.tensorboard = metric_writers.SummaryWriter(os.path.join(model_dir, "tensorboard", name))
            self.jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self.tensorboard.write_scalars(step, scalars)
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
            self.jsonl.close()
