"""Where metrics go: TensorBoard event files, `metrics.jsonl`, and the console.

Keys follow `split/name` (`train/loss`, `zeroshot/top1`, ...). Each call to
`write` appends one JSON object `{"step": ..., key: value, ...}` to
`metrics.jsonl`, so runs can be compared without TensorBoard. Only process 0
writes in a multi-process run.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from tensorboardX import SummaryWriter

from jaxmm.evaluate.projector import write_projector


class MetricWriter:
    def __init__(self, workdir: str | pathlib.Path):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {key: float(value) for key, value in metrics.items()}
        for key, value in values.items():
            if math.isfinite(value):
                self._tensorboard.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()

    def write_samples(self, step: int, samples: Sequence[tuple[np.ndarray, str]]) -> None:
        """Example predictions for TensorBoard: each `(image uint8 [H, W, 3], text)` pair as an
        image and a text entry under `samples/<i>` (not in metrics.jsonl: they are not numbers)."""
        if not self.enabled:
            return
        for index, (image, text) in enumerate(samples):
            self._tensorboard.add_image(f"samples/{index}", image, step, dataformats="HWC")
            self._tensorboard.add_text(f"samples/{index}", text, step)
        self._tensorboard.flush()

    def write_projector(self, step: int, points: tuple) -> None:
        """Image and text embeddings for TensorBoard's projector (`jaxmm.evaluate.projector`):
        `points` is `(image embeddings, text embeddings, thumbnails, captions)`."""
        if self.enabled:
            write_projector(self._tensorboard.logdir, *points, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()
