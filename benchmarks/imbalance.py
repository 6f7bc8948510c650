"""Class-imbalance strategies on `longtail_shapes` at equal steps: balanced test accuracy.

    python benchmarks/imbalance.py [--strategies=softmax_ce,logit_adjusted] [--out=...json]

Trains `configs/longtail_shapes.py` (48 classes, 500 to 5 training images a class) once per
strategy with the same model, steps, seed and augmentation, changing only the loss or the
sampling switch, then scores the final checkpoint on the balanced test split: `balanced`
(mean per-class accuracy, equal to the plain accuracy there) and its many-shot (> 100
training images), medium-shot (20-100) and few-shot (< 20) parts, the groups of Liu et al.
2019 ("Large-Scale Long-Tailed Recognition in an Open World"). Prints a table and writes
JSON (default `benchmarks/results/imbalance.json`) with the machine and the date.

Each run takes about three minutes on a 2-core CPU. The target (issue "Training
strategies"): the best strategy gains >= 10 points of balanced accuracy over plain
cross-entropy.
"""

import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The configs live beside jaxmm at the repository root, not in the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import jaxmm.train  # noqa: E402
from configs import longtail_shapes  # noqa: E402
from jaxmm import sharding  # noqa: E402
from jaxmm.data import datasets, pipeline, sampling  # noqa: E402
from jaxmm.train import tasks  # noqa: E402
from jaxmm.train.checkpoint import restore_variables  # noqa: E402
from jaxmm.train.steps import make_predict  # noqa: E402

# Each strategy is config overrides on top of longtail_shapes' plain cross-entropy.
STRATEGIES = {
    "softmax_ce": {},
    "focal": {"classification_loss.name": "focal"},
    "class_balanced_loss": {"classification_loss.name": "class_balanced"},
    # beta = 0.9999 is close to inverse frequency at 5-500 images a class; 0.99 is milder,
    # and Cui et al.'s best on CIFAR-100-LT weighs the focal loss.
    "class_balanced_loss_beta0.99": {
        "classification_loss.name": "class_balanced",
        "classification_loss.beta": 0.99,
    },
    "class_balanced_focal": {
        "classification_loss.name": "class_balanced",
        "classification_loss.base": "focal",
        "classification_loss.beta": 0.99,
    },
    "sqrt_sampling": {"data.sampling": "sqrt"},
    "class_balanced_sampling": {"data.sampling": "class_balanced"},
    "logit_adjusted": {"classification_loss.name": "logit_adjusted"},
}
# Training images per class that bound the many/medium/few-shot groups.
MANY_SHOT, FEW_SHOT = 100, 20
TARGET_GAIN = 0.10

flags.DEFINE_list("strategies", list(STRATEGIES), f"Which of {list(STRATEGIES)} to run.")
flags.DEFINE_integer("steps", 0, "Training steps of every run (0: the config's).")
flags.DEFINE_string("out", "benchmarks/results/imbalance.json", "Where to write the JSON.")
FLAGS = flags.FLAGS


def configure(overrides: dict[str, object]):
    config = longtail_shapes.get_config()
    config.progress_bar = False
    if FLAGS.steps:
        config.total_steps = FLAGS.steps
    for path, value in overrides.items():
        section, key = path.split(".")
        config[section][key] = value
    return config


def shot_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """`{group: [C] bool}`: the classes of each many/medium/few-shot group."""
    return {
        "many": train_counts > MANY_SHOT,
        "medium": (train_counts >= FEW_SHOT) & (train_counts <= MANY_SHOT),
        "few": train_counts < FEW_SHOT,
    }


def per_class_accuracy(config, workdir: pathlib.Path) -> np.ndarray:
    """`[C]` test accuracy of each class of the run's newest checkpoint."""
    mesh = sharding.make_mesh()
    builder = datasets.prepare_builder(config.data)
    task = tasks.make_task(config, builder, workdir)
    variables, _ = restore_variables(workdir / "checkpoints", mesh)
    predict = make_predict(task.model, mesh)
    source = builder.as_data_source(config.eval.split)
    with jax.set_mesh(mesh):
        logits = np.concatenate(
            [
                np.asarray(predict(variables, images))[:valid]
                for images, valid in pipeline.eval_batches(
                    source, config.data, config.eval.batch_size
                )
            ]
        )
    labels = sampling.split_labels(source, config.data.label_key)
    correct = logits.argmax(axis=-1) == labels
    num_classes = logits.shape[-1]
    return np.array([correct[labels == c].mean() for c in range(num_classes)])


def run_strategy(name: str, root: pathlib.Path) -> dict[str, float]:
    config = configure(STRATEGIES[name])
    workdir = root / name
    start = time.perf_counter()
    metrics = jaxmm.train.run(config, workdir)
    seconds = time.perf_counter() - start
    accuracy = per_class_accuracy(config, workdir)
    counts = datasets.get_builder(config.data).builder_config.train_counts
    row = {
        "overrides": STRATEGIES[name],
        "balanced": float(accuracy.mean()),
        **{group: float(accuracy[mask].mean()) for group, mask in shot_groups(counts).items()},
        "eval/mean_class_top1": metrics["eval/mean_class_top1"],
        "train_and_eval_seconds": round(seconds, 1),
    }
    print(f"{name}: {row}", flush=True)
    return row


def table(rows: dict[str, dict[str, float]]) -> str:
    baseline = rows.get("softmax_ce", {}).get("balanced")
    lines = [
        "| strategy | balanced top-1 | vs softmax_ce | many | medium | few | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        gain = "" if baseline is None else f"{100 * (row['balanced'] - baseline):+.1f}"
        lines.append(
            f"| {name} | {100 * row['balanced']:.1f}% | {gain} | {100 * row['many']:.1f}% | "
            f"{100 * row['medium']:.1f}% | {100 * row['few']:.1f}% | "
            f"{row['train_and_eval_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.strategies) - set(STRATEGIES))
    if unknown:
        raise app.UsageError(f"--strategies: unknown {unknown}; choose from {list(STRATEGIES)}")
    # The dataset is generated once, outside every run's timing.
    datasets.prepare_builder(configure({}).data)
    rows = {}
    with tempfile.TemporaryDirectory() as root:
        for name in FLAGS.strategies:
            rows[name] = run_strategy(name, pathlib.Path(root))
    print(table(rows))
    if "softmax_ce" in rows:
        best = max(rows, key=lambda name: rows[name]["balanced"])
        gain = rows[best]["balanced"] - rows["softmax_ce"]["balanced"]
        verdict = "met" if gain >= TARGET_GAIN else "NOT met"
        print(f"best: {best}, {100 * gain:+.1f} points over softmax_ce (target +10: {verdict})")
    config = configure({})
    result = {
        "benchmark": "imbalance",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "devices": [str(d) for d in jax.devices()],
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "setup": {
            "config": "longtail_shapes",
            "model": config.model.to_dict(),
            "total_steps": config.total_steps,
            "batch_size": config.batch_size,
        },
        "strategies": rows,
    }
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
