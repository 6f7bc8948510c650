"""Per-device memory of the contrastive losses: global `[N, N]` vs chunked vs ring (+ chunks).

    python benchmarks/contrastive_memory.py [--batch_sizes=256,1024,4096,16384] [--dim=512]

Compiles loss + gradients (InfoNCE and SigLIP) of `jaxmm.losses` (global) and of
`jaxmm.ring_losses` (`Chunks`, `DeviceRing`, `DeviceRing(inner=Chunks)`, the trainer's
`loss_impl='ring'`) for embeddings sharded over 8 fake CPU devices,
and reads the per-device temporary buffer size from `compiled.memory_analysis()`: nothing
is run, so large batches cost only compile time. Prints a table and writes JSON (default
`benchmarks/results/contrastive_memory.json`) with the date, the host and the jax version.
"""

import os

# Eight fake CPU devices, set before jax initialises its backend.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from jaxmm import losses, ring_losses, sharding  # noqa: E402

flags.DEFINE_list("batch_sizes", ["256", "1024", "4096", "16384"], "Global batch sizes N.")
flags.DEFINE_integer("dim", 512, "Embedding dimension D.")
flags.DEFINE_integer("chunk_size", 256, "Rows per chunk of the chunked variants.")
flags.DEFINE_string("out", "", "JSON path (default benchmarks/results/contrastive_memory.json).")
FLAGS = flags.FLAGS


def loss_fns(chunk_size: int) -> dict[str, tuple]:
    """`name -> (infonce(x, y, scale), siglip(x, y, scale, bias))`."""
    return {
        "global": (losses.clip_infonce_loss, losses.siglip_loss),
        "chunked": tuple(
            lambda *a, f=f: f(*a, ring_losses.Chunks(chunk_size))
            for f in (ring_losses.infonce_loss, ring_losses.siglip_loss)
        ),
        "ring": tuple(
            lambda *a, f=f: f(*a, ring_losses.DeviceRing())
            for f in (ring_losses.infonce_loss, ring_losses.siglip_loss)
        ),
        "ring+chunks": tuple(
            lambda *a, f=f: f(*a, ring_losses.DeviceRing(inner=ring_losses.Chunks(chunk_size)))
            for f in (ring_losses.infonce_loss, ring_losses.siglip_loss)
        ),
    }


def temp_bytes(loss_fn, num_scalars: int, batch: int, dim: int, mesh) -> int:
    """Per-device temporary bytes of `jit(value_and_grad(loss_fn))` on sharded embeddings."""
    rows = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharding.batch_sharding(mesh))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
    argnums = tuple(range(2 + num_scalars))
    step = jax.jit(jax.value_and_grad(loss_fn, argnums=argnums))
    with jax.set_mesh(mesh):
        compiled = step.lower(rows, rows, *[scalar] * num_scalars).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main(argv):
    del argv
    mesh = sharding.make_mesh({"data": -1})
    batches = [int(b) for b in FLAGS.batch_sizes]
    rows = []
    for name, (infonce, siglip) in loss_fns(FLAGS.chunk_size).items():
        for loss_name, fn, num_scalars in (("infonce", infonce, 1), ("siglip", siglip, 2)):
            for batch in batches:
                size = temp_bytes(fn, num_scalars, batch, FLAGS.dim, mesh)
                rows.append(dict(impl=name, loss=loss_name, batch=batch, temp_bytes=size))
                print(
                    f"{name:11s} {loss_name:8s} N={batch:6d}  {size / 2**20:10.2f} MiB", flush=True
                )

    print(f"\nper-device temp MiB, {jax.device_count()} devices, D={FLAGS.dim}:")
    print("| impl | loss | " + " | ".join(f"N={b}" for b in batches) + " |")
    print("|---|---|" + "---|" * len(batches))
    for name in loss_fns(FLAGS.chunk_size):
        for loss_name in ("infonce", "siglip"):
            sizes = [
                r["temp_bytes"] / 2**20
                for r in rows
                if r["impl"] == name and r["loss"] == loss_name
            ]
            print(f"| {name} | {loss_name} | " + " | ".join(f"{s:.2f}" for s in sizes) + " |")

    out = pathlib.Path(
        FLAGS.out or pathlib.Path(__file__).parent / "results/contrastive_memory.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        host=platform.node(),
        machine=platform.machine(),
        processor=platform.processor(),
        jax=jax.__version__,
        devices=jax.device_count(),
        dim=FLAGS.dim,
        chunk_size=FLAGS.chunk_size,
        rows=rows,
    )
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
