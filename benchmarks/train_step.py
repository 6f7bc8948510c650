"""Benchmark of the jitted training step (forward, backward, AdamW) beside its PyTorch peers.

On a GPU host (the peers' measured workloads; needs only jax, flax, optax, orbax, chex,
einops, and torch, torchvision, timm, transformers for the peers):

    python benchmarks/train_step.py --out=benchmarks/results/train_step_h100.json

which runs the default `--models=resnet50:256,vit_b16:256,clip_vit_b32:512,clip_vit_b16:256,
mobilenet_v2:256,swin_t:256` (`name:batch[:image_size]`) in bf16 with torch eager and compiled.

On a 2-core CPU (test-sized models at 32 px, float32, torch eager only; a few minutes):
`python benchmarks/train_step.py --cpu`.

Each workload runs in its own subprocess per framework (jaxmm, torch eager, torch.compile), so
each has the device to itself (jax preallocates most of a GPU's memory) and its own peak
memory. The protocol is the same for all: synthetic data placed on the device once, `--warmup`
steps (the first one compiles, timed apart), then `--steps` steps each waited for; the table
gives the median step time with its 10th-90th percentiles, images/s at the median, TFLOP/s and
MFU from the analytic FLOP count (`benchmarks/flops.py`: 2 x the multiply-accumulates of every
matmul and convolution, training = 3 x forward; MFU against the card's dense bf16 peak), the
peak device memory, and each row's speed relative to jaxmm's. The JSON adds the device, the
software versions and the date. Timings are reported, never asserted.

The jaxmm step is the project's own: `make_train_step` + `create_train_state` with the optimizer
of `jaxmm.train.optimizer` (AdamW, masked weight decay, no gradient clipping, as the peers),
the state donated, bf16 compute over float32 parameters with `--dtype=bfloat16`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # jaxmm beside benchmarks/

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

from benchmarks import flops  # noqa: E402
from jaxmm import sharding  # noqa: E402
from jaxmm.models import create_model, list_models  # noqa: E402
from jaxmm.models.clip import CLIP, CLIP_VARIANTS  # noqa: E402
from jaxmm.train import objectives, optimizer, state, steps  # noqa: E402

# The workloads the PyTorch peers were measured on, plus MobileNetV2 and Swin-T.
GPU_WORKLOADS = (
    "resnet50:256,vit_b16:256,clip_vit_b32:512,clip_vit_b16:256,mobilenet_v2:256,swin_t:256"
)
# Small enough for a shared 2-core CPU, compilation included: the test-sized variants at 32 px,
# and ResNet-18 for ResNet (torchvision fixes the width at 64, so resnet_test has no peer).
CPU_WORKLOADS = "resnet18:4:32,mobilenet_v2_test:8:32,vit_test:8:32,swin_test:8:32,clip_test:16:32"
FRAMEWORKS = ("jaxmm", "torch eager", "torch compile")
PEER_CHOICES = {
    "none": (),
    "eager": ("torch eager",),
    "compile": ("torch compile",),
    "all": ("torch eager", "torch compile"),
}
NUM_CLASSES = 1000
CONTEXT_LENGTH = 77  # CLIP's; shorter when the text tower's context is
# AdamW as jaxmm's configs spell it; torch_peers.ADAMW is the same optimizer for the peers.
OPTIM = dict(
    name="adamw",
    learning_rate=1e-3,
    warmup_steps=10,
    end_factor=0.0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.05,
    grad_clip_norm=0.0,
)


@dataclasses.dataclass(frozen=True)
class Workload:
    model: str
    batch: int
    image_size: int = 224

    @classmethod
    def parse(cls, spec: str, default_batch: int | None, default_image_size: int) -> Workload:
        """`name[:batch[:image_size]]`; `--batch` / `--image_size` fill what is left out."""
        name, *numbers = spec.strip().split(":")
        if len(numbers) > 2 or not all(n.isdigit() for n in numbers):
            raise ValueError(f"--models: {spec!r} is not name[:batch[:image_size]]")
        batch = int(numbers[0]) if numbers else default_batch
        if batch is None:
            raise ValueError(f"--models: {spec!r} gives no batch and --batch is not set")
        image_size = int(numbers[1]) if len(numbers) > 1 else default_image_size
        return cls(name, batch, image_size)


class _Fields(dict):
    """The `config.optim` fields `jaxmm.train.optimizer` reads (`optim.b1` and
    `optim.get('frozen', ())`), without ml_collections, which GPU hosts lack."""

    __getattr__ = dict.__getitem__


# Fields of the transformer models (ViT, text, Swin) that change speed or memory, never the
# numbers: set with --attention, --attention_pad, --scan, --remat where a model has them.
SPEED_FIELDS = ("attention_impl", "attention_pad_multiple", "scan_layers", "remat")


def speed_overrides(module: type[nn.Module], knobs: dict) -> dict:
    """The subset of `knobs` that `module` has as fields."""
    fields = getattr(module, "__dataclass_fields__", {})
    return {key: value for key, value in knobs.items() if key in fields}


def build_model(workload: Workload, dtype: str, knobs: dict | None = None) -> nn.Module:
    """The registry model in `dtype` compute over float32 parameters; classifiers get 1000
    classes. `knobs` (SPEED_FIELDS values) go to every tower that has them."""
    knobs = knobs or {}
    overrides = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.float32)
    if workload.model not in CLIP_VARIANTS:
        overrides["num_classes"] = NUM_CLASSES
        plain = create_model(workload.model, **overrides)
        return create_model(workload.model, **overrides, **speed_overrides(type(plain), knobs))
    plain = create_model(workload.model, **overrides)
    variant = CLIP_VARIANTS[workload.model]
    for role, tower in (("image", plain.image_tower), ("text", plain.text_tower)):
        tower_knobs = speed_overrides(type(tower), knobs)
        if tower_knobs:
            overrides[role] = {**variant.get(role, {}), **tower_knobs}
    return create_model(workload.model, **overrides)


def synthetic_batch(model: nn.Module, workload: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """Normalised-looking images `[B, H, W, 3]` float32 and labels `[B]`, or tokens `[B, L]`
    that end in EOT (the largest id, where CLIP's text tower pools)."""
    rng = np.random.default_rng(seed)
    size = workload.image_size
    batch = {"image": rng.standard_normal((workload.batch, size, size, 3), np.float32)}
    if isinstance(model, CLIP):
        vocab = model.text_tower.vocab_size
        length = min(CONTEXT_LENGTH, model.text_tower.context_length)
        tokens = rng.integers(1, vocab - 1, (workload.batch, length), dtype=np.int32)
        tokens[:, -1] = vocab - 1
        batch["tokens"] = tokens
    else:
        batch["label"] = rng.integers(0, NUM_CLASSES, workload.batch, dtype=np.int32)
    return batch


def time_steps(step: Callable[[], None], warmup: int, num_steps: int) -> dict[str, float]:
    """Runs `step` (which waits for its own completion) `warmup + num_steps` times.

    Returns the first step's time (compilation included) and the median and 10th/90th
    percentiles of the last `num_steps` steps, in seconds.
    """
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(num_steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return {"first_step_s": first, "median_s": median, "p10_s": p10, "p90_s": p90}


def train_flops_per_image(model: nn.Module, objective, batch: dict[str, np.ndarray]) -> float:
    """3 x the forward matmul/conv FLOPs of model + loss on the batch, per image (the CLIP
    similarity matrix grows with the batch, so it is counted at the benchmarked size)."""
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *objective.inputs(abstract))

    def forward_loss(variables, batch):
        outputs, _ = model.apply(
            variables,
            *objective.inputs(batch),
            train=True,
            rngs={"dropout": jax.random.PRNGKey(0)},
            mutable=["batch_stats"],
        )
        return objective.loss(outputs, batch)[0]

    forward = flops.matmul_flops(forward_loss, variables, abstract)
    return flops.TRAIN_FLOPS_PER_FORWARD_FLOP * forward / len(batch["image"])


@dataclasses.dataclass
class JaxmmStep:
    """jaxmm's jitted train step for a workload, with its state and batch on one device."""

    model: nn.Module
    objective: object
    batch: dict[str, np.ndarray]
    train_step: Callable
    train_state: object
    on_device: dict
    mesh: jax.sharding.Mesh
    device: jax.Device

    @contextlib.contextmanager
    def context(self):
        """The mesh and logical rules the step is traced under."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
            yield


def make_jaxmm_step(
    workload: Workload, dtype: str, total_steps: int, knobs: dict | None = None
) -> JaxmmStep:
    """Builds the model, state and jitted step as `jaxmm.train.loop` does (state shardings in
    and out, the old state donated), on the first device."""
    model = build_model(workload, dtype, knobs)
    batch = synthetic_batch(model, workload)
    objective = objectives.Contrastive("infonce") if isinstance(model, CLIP) else None
    objective = objective or objectives.Classification()
    device = jax.devices()[0]
    mesh = sharding.make_mesh(devices=[device])
    tx = optimizer.make_optimizer(_Fields(OPTIM), total_steps)
    schedule = optimizer.learning_rate_schedule(_Fields(OPTIM), total_steps)
    init_inputs = objective.inputs({k: v[:2] for k, v in batch.items()})
    train_state, state_shardings = state.create_train_state(
        lambda rng: model.init(rng, *init_inputs), tx, mesh, seed=0
    )
    batch_sharding = sharding.batch_sharding(mesh)
    train_step = jax.jit(
        steps.make_train_step(model, tx, objective, schedule),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    on_device = jax.device_put(batch, batch_sharding)
    return JaxmmStep(model, objective, batch, train_step, train_state, on_device, mesh, device)


def run_jaxmm(
    workload: Workload, dtype: str, warmup: int, num_steps: int, knobs: dict | None = None
) -> dict:
    """Times jaxmm's train step on one device; returns the measurements and FLOPs."""
    setup = make_jaxmm_step(workload, dtype, warmup + num_steps, knobs)
    flops_per_image = train_flops_per_image(setup.model, setup.objective, setup.batch)
    result = {"train_flops_per_image": flops_per_image}
    train_state = setup.train_state

    def step() -> None:
        nonlocal train_state
        train_state, metrics = setup.train_step(train_state, setup.on_device)
        jax.block_until_ready((train_state, metrics))

    with setup.context():
        result.update(time_steps(step, warmup, num_steps))
    stats = setup.device.memory_stats() or {}
    result["peak_memory_bytes"] = stats.get("peak_bytes_in_use")
    result["device"] = setup.device.device_kind
    result["versions"] = jax_versions()
    return result


def run_torch(workload: Workload, framework: str, dtype: str, warmup: int, num_steps: int):
    """Times the PyTorch peer's step (`framework`: 'torch eager' or 'torch compile')."""
    from benchmarks import torch_peers

    model = build_model(workload, dtype)
    peer = torch_peers.make_peer_step(
        model,
        synthetic_batch(model, workload),
        image_size=workload.image_size,
        bfloat16=dtype == "bfloat16",
        compile_model=framework == "torch compile",
    )
    result = time_steps(peer.step, warmup, num_steps)
    result["peak_memory_bytes"] = peer.peak_memory_bytes()
    result["device"] = peer.device
    result["versions"] = torch_peers.versions()
    return result


def jax_versions() -> dict[str, str]:
    from importlib import metadata

    import flax
    import optax

    return {
        "jax": jax.__version__,
        "jaxlib": metadata.version("jaxlib"),
        "flax": flax.__version__,
        "optax": optax.__version__,
    }


def knob_flags(args: argparse.Namespace) -> dict[str, str]:
    """The speed options given on the command line, as flags for a worker."""
    flags = {"attention": args.attention, "attention_pad": args.attention_pad}
    flags |= {"scan": args.scan, "remat": args.remat}
    return {flag: value for flag, value in flags.items() if value is not None}


def knobs(args: argparse.Namespace) -> dict:
    """The speed options as model fields (SPEED_FIELDS)."""
    fields = {
        "attention_impl": args.attention,
        "attention_pad_multiple": args.attention_pad,
        "scan_layers": None if args.scan is None else args.scan == "true",
        "remat": args.remat,
    }
    return {key: value for key, value in fields.items() if value is not None}


def worker(args: argparse.Namespace) -> None:
    """One framework on one workload, in this process; prints `RESULT <json>` last."""
    workload = Workload.parse(args.models, args.batch, args.image_size)
    try:
        if args.worker == "jaxmm":
            result = run_jaxmm(workload, args.dtype, args.warmup, args.steps, knobs(args))
        else:
            result = run_torch(workload, args.worker, args.dtype, args.warmup, args.steps)
    except Exception as error:  # an OOM or a missing peer is a row, not the end of the run
        result = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    print("RESULT " + json.dumps(result), flush=True)


def spawn(workload: Workload, framework: str, args: argparse.Namespace) -> dict:
    """Runs `worker` for one framework and workload in a fresh python."""
    command = [
        sys.executable,
        __file__,
        f"--worker={framework}",
        f"--models={workload.model}:{workload.batch}:{workload.image_size}",
        f"--dtype={args.dtype}",
        f"--warmup={args.warmup}",
        f"--steps={args.steps}",
        *(f"--{flag}={value}" for flag, value in knob_flags(args).items()),
    ]
    env = dict(os.environ)
    if framework != "jaxmm":  # keep jax off the GPU the peer is timed on
        env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"error": f"worker exited with status {done.returncode} and no result"}
    return json.loads(lines[-1].removeprefix("RESULT "))


def summarise(workload: Workload, framework: str, result: dict, flops_per_image, peak_tflops):
    """One table row: throughput, FLOP rate and MFU from the raw measurements."""
    row = {"model": workload.model, "batch": workload.batch, "image_size": workload.image_size}
    row |= {"framework": framework, **result, "train_flops_per_image": flops_per_image}
    if "median_s" in result:
        row["images_per_s"] = workload.batch / result["median_s"]
        if flops_per_image:
            row["tflops_per_s"] = flops_per_image * row["images_per_s"] / 1e12
            row["mfu"] = row["tflops_per_s"] / peak_tflops if peak_tflops else None
    return row


def _show(value: float | None, scale: float, fmt: str) -> str:
    return "n/a" if value is None else format(value * scale, fmt)


# (header, width, row -> cell) for each column after the workload and framework.
COLUMNS: tuple[tuple[str, int, Callable[[dict], str]], ...] = (
    ("step ms (p10-p90)", 22, lambda r: "{:.1f} ({:.1f}-{:.1f})".format(
        *(1e3 * r[k] for k in ("median_s", "p10_s", "p90_s")))),
    ("img/s", 8, lambda r: f"{r['images_per_s']:.1f}"),
    ("GFLOP/img", 9, lambda r: _show(r["train_flops_per_image"], 1e-9, ".4g")),
    ("TFLOP/s", 8, lambda r: _show(r.get("tflops_per_s"), 1, ".4g")),
    ("MFU %", 6, lambda r: _show(r.get("mfu"), 100, ".1f")),
    ("peak GiB", 8, lambda r: _show(r["peak_memory_bytes"], 2**-30, ".2f")),
    ("1st step s", 10, lambda r: f"{r['first_step_s']:.1f}"),
)  # fmt: skip


def format_table(rows: list[dict]) -> str:
    """One line per (workload, framework); `jaxmm/this` is jaxmm's img/s over the row's."""
    header = f"{'model':18s} {'batch':>5s} {'px':>4s} {'framework':26s} "
    header += " ".join(f"{name:>{width}s}" for name, width, _ in COLUMNS) + " jaxmm/this"
    lines = [header, "-" * len(header)]
    jaxmm_speed = {}
    for r in rows:  # the first measured jaxmm row of each model, whatever its speed options
        if r["framework"].startswith("jaxmm") and "images_per_s" in r:
            jaxmm_speed.setdefault(r["model"], r.get("images_per_s"))
    for r in rows:
        line = f"{r['model']:18s} {r['batch']:5d} {r['image_size']:4d} {r['framework']:26s} "
        if "error" in r:
            lines.append(line + f"failed: {r['error']}")
            continue
        line += " ".join(f"{cell(r):>{width}s}" for _, width, cell in COLUMNS)
        speed = jaxmm_speed.get(r["model"])
        lines.append(line + f" {_show(speed and speed / r['images_per_s'], 1, '10.2f'):>10s}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    specs = args.models or (CPU_WORKLOADS if args.cpu else GPU_WORKLOADS)
    workloads = [Workload.parse(s, args.batch, args.image_size) for s in specs.split(",")]
    unknown = [w.model for w in workloads if w.model not in list_models()]
    if unknown:
        raise SystemExit(f"--models: unknown model(s) {unknown}; registered: {list_models()}")
    peers = args.peers or ("eager" if args.cpu else "all")
    frameworks = (*(() if args.only_peers else ("jaxmm",)), *PEER_CHOICES[peers])
    if peers != "none" and importlib.util.find_spec("torch") is None:
        print("torch is not installed: timing jaxmm only")
        frameworks = ("jaxmm",)

    out = pathlib.Path(
        args.out or f"benchmarks/results/train_step_{'cpu' if args.cpu else 'gpu'}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    label = args.label or " ".join(["jaxmm", *(f"{k}={v}" for k, v in knob_flags(args).items())])
    rows, devices, versions = [], {}, {}
    for workload in workloads:
        flops_per_image = None
        for framework in frameworks:
            print(f"timing {workload} with {framework}", flush=True)
            result = spawn(workload, framework, args)
            flops_per_image = result.pop("train_flops_per_image", flops_per_image)
            devices[framework] = result.pop("device", devices.get(framework))
            versions |= result.pop("versions", {})
            peak = flops.peak_bf16_tflops(devices[framework] or "")
            name = label if framework == "jaxmm" else framework
            rows.append(summarise(workload, name, result, flops_per_image, peak))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
            # Written after every row: a run cut short by a time limit keeps what it measured.
            write_report(out, args, rows, devices, versions)
    print("\n" + format_table(rows))
    print(f"\nwrote {out}")


def write_report(out: pathlib.Path, args, rows: list[dict], devices: dict, versions: dict):
    """The JSON report: the rows so far, the machine, versions and protocol."""

    report = {
        "benchmark": "benchmarks/train_step.py",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "devices": devices,
        "versions": {"python": platform.python_version(), **versions},
        "dtype": args.dtype,
        "steps": args.steps,
        "warmup": args.warmup,
        "flops": "2 x MACs of every matmul and conv in model + loss, traced; train = 3 x forward",
        "mfu_peak_tflops": {name: peak for name, peak in flops.PEAK_BF16_TFLOPS},
        "speed_options": knob_flags(args),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "rows": rows,
    }
    out.write_text(json.dumps(report, indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", help="name[:batch[:image_size]],... (jaxmm registry names); default by mode"
    )
    parser.add_argument("--batch", type=int, help="batch of models given without one")
    parser.add_argument("--image_size", type=int, help="of models given without one (default 224)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps (>= 2)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps, compile included")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help="default bf16, f32 --cpu")
    parser.add_argument("--peers", choices=tuple(PEER_CHOICES), help="default all, eager --cpu")
    parser.add_argument("--cpu", action="store_true", help="CI-sized models for 2-core CPUs")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/train_step_*.json)")
    parser.add_argument("--attention", choices=("xla", "cudnn"), help="attention implementation")
    parser.add_argument("--attention_pad", type=int, help="pad attention lengths to a multiple")
    parser.add_argument("--scan", choices=("true", "false"), help="scan transformer layers")
    parser.add_argument("--remat", help="rematerialisation policy (jaxmm.models.layers)")
    parser.add_argument("--only_peers", action="store_true", help="time the peers alone")
    parser.add_argument("--label", help="name of the jaxmm rows (default: jaxmm + options)")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.warmup < 1:
        parser.error(f"--steps must be >= 2 and --warmup >= 1, got {args.steps}, {args.warmup}")
    args.dtype = args.dtype or ("float32" if args.cpu else "bfloat16")
    args.image_size = args.image_size or 224
    return args


if __name__ == "__main__":
    arguments = parse_args()
    worker(arguments) if arguments.worker else main(arguments)
