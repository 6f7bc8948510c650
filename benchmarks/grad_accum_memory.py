"""Per-device memory of a train step with gradient accumulation: k = 1, 2, 4, 8 micro-batches.

    python benchmarks/grad_accum_memory.py [--model=clip_small] [--batch_size=256] \\
        [--image_size=32] [--devices=1] [--steps=1,2,4,8] [--out=...json]

Compiles the trainer's step (`jaxmm.train.steps.make_train_step`, AdamW) of a CLIP model
(contrastive InfoNCE: the cached-output method) and of configs/clip_small.py's image tower
as a 48-class ViT classifier (micro-batch method) for each `k`, and reads the temporary
buffer size per device from `compiled.memory_analysis()`: nothing is run, so the sizes
cost only compile time. `--model` is a CLIP registry name, or `clip_small` for
configs/clip_small.py's model. Prints a table and writes JSON (default
`benchmarks/results/grad_accum_memory.json`).
"""

import os
import sys

# Fake CPU devices, set before jax initialises its backend.
_DEVICES = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "1")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import linen as nn  # noqa: E402

from configs import clip_small  # noqa: E402
from jaxmm import sharding  # noqa: E402
from jaxmm.models import create_model  # noqa: E402
from jaxmm.train.objectives import Classification, Contrastive  # noqa: E402
from jaxmm.train.state import create_train_state  # noqa: E402
from jaxmm.train.steps import make_train_step  # noqa: E402

flags.DEFINE_string("model", "clip_small", "A CLIP registry name, or clip_small (the config's).")
flags.DEFINE_integer("batch_size", 256, "Global batch size.")
flags.DEFINE_integer("image_size", 32, "Image side in pixels.")
flags.DEFINE_integer("devices", 1, "Fake CPU devices the batch is split over.")
flags.DEFINE_list("steps", ["1", "2", "4", "8"], "grad_accum_steps values.")
flags.DEFINE_string("out", "", "JSON path (default benchmarks/results/grad_accum_memory.json).")
FLAGS = flags.FLAGS
CONTEXT = 32
VOCAB = 1024


def clip_model() -> nn.Module:
    if FLAGS.model != "clip_small":
        return create_model(FLAGS.model)
    model = clip_small.get_config().model.to_dict()
    name = model.pop("name")
    return create_model(name, text={**model.pop("text"), "vocab_size": VOCAB}, **model)


def step_memory(model, objective, batch, k: int, mesh) -> int:
    """Temporary bytes per device of the compiled step."""
    tx = optax.adamw(1e-3)
    inputs = objective.inputs({key: value[:1] for key, value in batch.items()})
    state, shardings = create_train_state(lambda rng: model.init(rng, *inputs), tx, mesh, seed=0)
    batch_sharding = sharding.batch_sharding(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        step = jax.jit(
            make_train_step(
                model, tx, objective, optax.constant_schedule(1e-3), grad_accum_steps=k
            ),
            in_shardings=(shardings, batch_sharding),
            out_shardings=(shardings, None),
            donate_argnums=0,
        )
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
        compiled = step.lower(state, abstract).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main(argv):
    del argv
    n, size = FLAGS.batch_size, FLAGS.image_size
    tokens = np.ones((n, CONTEXT), np.int32)
    tokens[:, -1] = VOCAB - 1
    images = np.zeros((n, size, size, 3), np.float32)
    mesh = sharding.make_mesh({"data": FLAGS.devices}, jax.devices())
    clip = clip_model()
    # The same ViT as configs/clip_small.py's image tower, classifying 48 classes.
    image_fields = clip_small.get_config().model.image.to_dict()
    classifier = create_model("vit_test", num_classes=48, **image_fields)
    labels = np.zeros((n,), np.int32)
    cases = {
        "contrastive (cached outputs)": (
            clip,
            Contrastive("infonce"),
            {"image": images, "tokens": tokens},
        ),
        "classification (micro-batches)": (
            classifier,
            Classification(),
            {"image": images, "label": labels},
        ),
    }
    rows = []
    for label, (model, objective, batch) in cases.items():
        for k in map(int, FLAGS.steps):
            mib = step_memory(model, objective, batch, k, mesh) / 2**20
            rows.append({"case": label, "grad_accum_steps": k, "temp_mib_per_device": mib})
            print(f"{label:30s} k={k:<3d} {mib:10.1f} MiB temporary per device", flush=True)
    result = {
        "benchmark": "grad_accum_memory",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "jax": jax.__version__,
        "model": FLAGS.model,
        "batch_size": n,
        "image_size": size,
        "devices": FLAGS.devices,
        "rows": rows,
    }
    out = pathlib.Path(FLAGS.out or "benchmarks/results/grad_accum_memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
