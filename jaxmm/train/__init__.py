"""Training: state, optimizer, jitted steps, checkpoints, metrics and the loop."""

from jaxmm.train.loop import run

__all__ = ["run"]
