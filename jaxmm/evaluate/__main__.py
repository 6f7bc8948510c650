"""Evaluate a trained or converted model: `python -m jaxmm.evaluate`.

    python -m jaxmm.evaluate --config=configs/clip_small.py --checkpoint=runs/clip_small
    python -m jaxmm.evaluate --config=configs/clip_small.py --checkpoint=runs/clip_small \\
        --config.eval.linear_probe=True --config.eval.few_shot='(1, 5, 10)'

`--checkpoint` is a jaxmm run folder (or its `checkpoints` folder, or one step's folder) or a
PyTorch checkpoint `jaxmm.convert` knows. The config's task runs its own evaluation on
`eval.split` (zero-shot and retrieval for CLIP, top-1/top-5 for classifiers); CLIP configs
add the image-feature probes `eval.linear_probe` and `eval.few_shot` ask for. With
`--config.wise_alpha=0.5` (or a tuple), the WiSE-FT interpolations of the checkpoint with the
config's `init_from` are evaluated too, as `wise0.5/...`. The metrics are printed and
written to `eval_metrics.json` in `--out` (default: the run folder, or the PyTorch
checkpoint's folder). Any config field can be overridden with `--config.FIELD=VALUE`.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import linen as nn  # noqa: E402
from flax import traverse_util  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from ml_collections import ConfigDict, config_flags  # noqa: E402

from jaxmm import cli, sharding  # noqa: E402
from jaxmm.data import datasets, pipeline  # noqa: E402
from jaxmm.evaluate.few_shot import few_shot_metrics  # noqa: E402
from jaxmm.evaluate.image_text import embed_images  # noqa: E402
from jaxmm.evaluate.linear_probe import linear_probe  # noqa: E402
from jaxmm.train import tasks  # noqa: E402
from jaxmm.train.loop import validate_config  # noqa: E402
from jaxmm.train.pretrained import load_pretrained, load_variables  # noqa: E402
from jaxmm.train.steps import make_encoders  # noqa: E402
from jaxmm.train.task_common import run_folder  # noqa: E402
from jaxmm.train.wise import evaluate_interpolations, wise_alphas  # noqa: E402

METRICS_FILE = "eval_metrics.json"


def _task_workdir(config: ConfigDict, run: pathlib.Path | None, out: pathlib.Path) -> pathlib.Path:
    """Where the task finds the run's tokenizer (and VQA's answer list). A text tower trained
    with its own BPE vocabulary is meaningless with any other, so one is never retrained for
    evaluation."""
    needs_run_tokenizer = "tokenizer" in config and config.tokenizer.kind == "bpe"
    if needs_run_tokenizer and (run is None or not (run / tasks.TOKENIZER_FILE).is_file()):
        raise FileNotFoundError(
            f"the config's BPE tokenizer is learnt per run, but no {tasks.TOKENIZER_FILE} was "
            f"found in the run folder of the checkpoint ({run or 'none found'})"
        )
    return run or out


def _placeholders(task: Any) -> Any:
    """The model's variables as NaN arrays: shapes and dtypes for `load_pretrained`, and a
    mark on anything the checkpoint does not overwrite."""
    shapes = jax.eval_shape(task.model.init, jax.random.PRNGKey(0), *task.init_inputs())
    return jax.tree.map(lambda s: np.full(s.shape, np.nan, s.dtype), nn.unbox(shapes))


def _check_all_loaded(variables: Any, checkpoint: pathlib.Path) -> None:
    """`load_pretrained` keeps a classifier head the checkpoint lacks (another class count)
    at its initial value, here NaN: evaluating it would be meaningless."""
    flat = traverse_util.flatten_dict(dict(variables))
    fresh = ["/".join(path) for path, value in flat.items() if np.isnan(value).any()]
    if fresh:
        raise ValueError(
            f"{checkpoint} has no classifier for this config's classes; not in it: "
            + ", ".join(fresh)
        )


def _labelled_features(encode, task: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """`(features [N, E], labels [N])` of every image of `split`."""
    label_key = task.config.data.get("label_key", "label")
    source = task.builder.as_data_source(split)
    labels = pipeline.split_annotations(source, label_key)["labels"]
    if labels is None or labels.min() < 0:
        raise ValueError(
            f"split {split!r} is not labelled ({label_key!r}); choose another eval.probe_split"
        )
    return embed_images(encode, source, task.config.data, task.config.eval.batch_size), labels


def wants_probes(eval_config: ConfigDict) -> bool:
    """Whether the config asks for probes; raises if they would be scored on their own data."""
    if not eval_config.get("linear_probe", False) and not eval_config.get("few_shot", ()):
        return False
    if eval_config.probe_split == eval_config.split:
        raise ValueError(
            f"eval.probe_split and eval.split are both {eval_config.split!r}: the probes "
            "would be scored on the images they learnt from"
        )
    return True


def probe_metrics(task: Any, mesh: Mesh, variables: Any) -> dict[str, float]:
    """`probe/top1`, `probe/C` and `fewshot/k{K}_top1` on `eval.split`, as the config asks."""
    eval_config = task.config.eval
    shots = tuple(eval_config.get("few_shot", ()))
    if not wants_probes(eval_config):
        return {}
    encode_image, _ = make_encoders(task.model, mesh)
    encode = lambda images: encode_image(variables, images)  # noqa: E731
    train = _labelled_features(encode, task, eval_config.probe_split)
    test = _labelled_features(encode, task, eval_config.split)
    label_key = task.config.data.get("label_key", "label")
    num_classes = len(pipeline.class_names(task.builder, label_key))
    metrics = {}
    if eval_config.get("linear_probe", False):
        order = np.random.default_rng(eval_config.probe_seed).permutation(len(train[1]))
        num_val = max(1, round(eval_config.probe_val_fraction * len(order)))
        fit, val = order[num_val:], order[:num_val]
        probe = linear_probe(
            (train[0][fit], train[1][fit]), (train[0][val], train[1][val]), test, num_classes
        )
        metrics.update({f"probe/{key}": value for key, value in probe.items()})
    if shots:
        few_shot = few_shot_metrics(train, test, num_classes, shots, eval_config.probe_seed)
        metrics.update({f"fewshot/{key}": value for key, value in few_shot.items()})
    return metrics


def evaluate(
    config: ConfigDict, checkpoint: str | pathlib.Path, out: str | pathlib.Path | None = None
) -> dict[str, float]:
    """Evaluates `checkpoint` with `config`'s task; writes and returns the metrics."""
    checkpoint = pathlib.Path(checkpoint).expanduser()
    if not checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint: {checkpoint} does not exist")
    run = run_folder(checkpoint)
    if out is None:
        out = run or (checkpoint if checkpoint.is_dir() else checkpoint.parent)
    out = pathlib.Path(out)
    # Configuration errors first, before the dataset is prepared or anything compiled.
    mesh = sharding.make_mesh(config.mesh.to_dict())
    validate_config(config, mesh)
    workdir = _task_workdir(config, run, out)
    wants_probes(config.eval)
    builder = datasets.prepare_builder(config.data)
    task = tasks.make_task(config, builder, workdir)

    variables = load_pretrained(str(checkpoint), task, _placeholders(task))
    _check_all_loaded(variables, checkpoint)
    variables = jax.device_put(variables, sharding.replicated(mesh))

    evaluator = task.evaluator(mesh)

    def evaluate_variables(variables: Any) -> dict[str, float]:
        metrics = evaluator(variables)
        if isinstance(task, tasks.ContrastiveTask):
            metrics.update(probe_metrics(task, mesh, variables))
        return metrics

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config.mesh_rules)):
        metrics = evaluate_variables(variables)
        if alphas := wise_alphas(config):  # WiSE-FT towards the config's init_from
            zeroshot = load_variables(config.init_from, task)
            metrics |= evaluate_interpolations(evaluate_variables, zeroshot, variables, alphas)
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def format_table(metrics: dict[str, float]) -> str:
    width = max(map(len, metrics), default=0)
    return "\n".join(f"  {key:{width}s}  {metrics[key]:.4g}" for key in sorted(metrics))


config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("checkpoint", None, "A jaxmm run folder or a PyTorch checkpoint file.")
flags.DEFINE_string("out", None, f"Folder for {METRICS_FILE} (default: the run folder).")
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics = evaluate(flags.FLAGS.config, flags.FLAGS.checkpoint, flags.FLAGS.out)
    if jax.process_index() == 0:
        print(f"\nEvaluated {flags.FLAGS.checkpoint} on split {flags.FLAGS.config.eval.split!r}:")
        print(format_table(metrics))
    return metrics


if __name__ == "__main__":
    # Exit status 0 on success (absl would take the metrics `main` returns for a status).
    cli.run(main)
