"""Zero-shot classification throughput on this machine: images/s and classifier-building time.

    python benchmarks/eval_throughput.py [--models clip_smoke clip_small clip_vit_b32]
        [--classes cifar10] [--num_images N] [--repeats 3] [--out ...json]

For each model, with random weights (speed does not depend on them) and OpenAI's CLIP
tokenizer, it times the two halves of a zero-shot evaluation through the functions the
evaluator uses (`jaxmm.evaluate.image_text`, `jaxmm.evaluate.zeroshot`, the jitted encoders
of `jaxmm.train.steps.make_encoders`):

* the text side, once per class set: `zeroshot_classifier` over every class x template
  prompt (tokenising, encoding, prompt ensembling);
* the image side, per image: `embed_images` (centre crop, resize and normalise of decoded
  uint8 images, then the image tower; the tower alone is also timed) and `zeroshot_metrics`
  (scoring against the classifier and ranking). JPEG decoding is not included: the images
  are in memory. Zero-shot img/s is N / (embed_images + zeroshot_metrics time).

Every timed call runs once untimed first, so compilation is excluded (the classifier's first
call, compilation included, is reported apart); the median of `--repeats` timed runs is
reported. Prints a table and writes JSON (default
`benchmarks/results/eval_throughput.json`) with the host CPU, core count, load average,
jax version and date. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The configs live beside jaxmm at the repository root, not in the package.
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from configs import clip_small  # noqa: E402
from jaxmm import sharding  # noqa: E402
from jaxmm.data import pipeline  # noqa: E402
from jaxmm.data.image_ops import CLIP_MEAN, CLIP_STD  # noqa: E402
from jaxmm.data.tokenizer import load_clip_tokenizer  # noqa: E402
from jaxmm.evaluate.image_text import embed_images  # noqa: E402
from jaxmm.evaluate.templates import CLASS_NAMES, get_templates  # noqa: E402
from jaxmm.evaluate.zeroshot import zeroshot_classifier, zeroshot_metrics  # noqa: E402
from jaxmm.models import create_model  # noqa: E402
from jaxmm.train.steps import make_encoders  # noqa: E402
from jaxmm.train.tasks import clip_model_overrides  # noqa: E402

# Stored images are larger than the model's input, as in a real split (the Flickr8k sample
# keeps 256 px); the evaluator's crop and resize are part of the image-side time.
STORED_IMAGE_SIZE = 256


def _vit_b32_config() -> ConfigDict:
    """OpenAI's ViT-B/32 CLIP at its 224 px, with CLIP's 77-token context and statistics."""
    config = clip_small.get_config()
    config.model = dict(name="clip_vit_b32")
    config.data.update(image_size=224, context_length=77, mean=CLIP_MEAN, std=CLIP_STD)
    return config


# name -> (what it is, its config, default number of images, batch size).
MODELS: dict[str, tuple[str, Callable[[], ConfigDict], int, int]] = {
    "clip_smoke": (
        "clip_test as in configs/clip_small.py:smoke",
        lambda: clip_small.get_config("smoke"),
        2048,
        256,
    ),
    "clip_small": (
        "the default job's model, configs/clip_small.py",
        clip_small.get_config,
        2048,
        256,
    ),
    "clip_vit_b32": ("clip_vit_b32 at 224 px", _vit_b32_config, 64, 32),
}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn` (warm it up first: compiling is not timed)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark_model(name: str, args: argparse.Namespace, tokenizer) -> dict:
    """One row of the table: the timings of `name` on `args.num_images` random images."""
    description, make_config, default_images, batch_size = MODELS[name]
    config = make_config()
    num_images = args.num_images or default_images
    model_name, overrides = clip_model_overrides(config, tokenizer.vocab_size)
    model = create_model(model_name, **overrides)
    size, context = config.data.image_size, config.data.context_length
    variables = jax.jit(model.init)(
        jax.random.PRNGKey(0),
        np.zeros((1, size, size, 3), np.float32),
        np.zeros((1, context), np.int32),
    )
    num_params = sum(x.size for x in jax.tree.leaves(variables))
    mesh = sharding.make_mesh()
    encode_image, encode_text = make_encoders(model, mesh)
    class_names, templates = CLASS_NAMES[args.classes], get_templates(args.classes)

    def build_classifier() -> np.ndarray:
        return zeroshot_classifier(
            lambda tokens: encode_text(variables, tokens),
            lambda texts: tokenizer(texts, context_length=context),
            class_names,
            templates,
            batch_size=batch_size,
        )

    start = time.perf_counter()
    classifier = build_classifier()  # also the warm-up: compiles the text encoder
    first_build = time.perf_counter() - start
    build = _median_seconds(build_classifier, args.repeats)

    rng = np.random.default_rng(0)
    source = [
        {"image": rng.integers(0, 256, (STORED_IMAGE_SIZE, STORED_IMAGE_SIZE, 3), np.uint8)}
        for _ in range(num_images)
    ]
    labels = rng.integers(0, len(class_names), num_images)

    def embed() -> np.ndarray:
        return embed_images(lambda x: encode_image(variables, x), source, config.data, batch_size)

    def score() -> dict[str, float]:
        return zeroshot_metrics(embeddings, labels, classifier)

    # The image tower alone, on batches preprocessed beforehand: what the model costs
    # without the host's crop, resize and normalise.
    batches = [images for images, _ in pipeline.eval_batches(source, config.data, batch_size)]

    def tower() -> list[jax.Array]:
        return [encode_image(variables, images) for images in batches]

    embeddings = embed()  # warm-ups: compile the image encoder and the scoring kernel
    score()
    encode_seconds = _median_seconds(embed, args.repeats)
    tower_seconds = _median_seconds(tower, args.repeats)
    score_seconds = _median_seconds(score, args.repeats)
    return {
        "model": name,
        "description": description,
        "image_size": size,
        "context_length": context,
        "params_millions": round(num_params / 1e6, 2),
        "num_images": num_images,
        "batch_size": batch_size,
        "prompts": f"{len(class_names)} classes x {len(templates)} templates ({args.classes})",
        "classifier_seconds": round(build, 3),
        "classifier_first_call_seconds": round(first_build, 3),
        "encode_images_per_second": round(num_images / encode_seconds, 1),
        "image_tower_images_per_second": round(num_images / tower_seconds, 1),
        "score_images_per_second": round(num_images / score_seconds, 1),
        "zeroshot_images_per_second": round(num_images / (encode_seconds + score_seconds), 1),
    }


def cpu_name() -> str:
    """The host CPU's model name (Linux), else what `platform` knows."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def format_table(rows: list[dict]) -> str:
    header = (
        "| model | px | params | prompts | classifier (s) | first call (s) | encode img/s "
        "| of which tower img/s | score img/s | zero-shot img/s |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['image_size']} | {row['params_millions']}M "
            f"| {row['prompts']} | {row['classifier_seconds']:.2f} "
            f"| {row['classifier_first_call_seconds']:.2f} "
            f"| {row['encode_images_per_second']:,.1f} "
            f"| {row['image_tower_images_per_second']:,.1f} "
            f"| {row['score_images_per_second']:,.0f} "
            f"| {row['zeroshot_images_per_second']:,.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--classes", default="cifar10", choices=sorted(CLASS_NAMES))
    parser.add_argument(
        "--num_images", type=int, default=0, help="images per model (default: per model)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median counts")
    parser.add_argument(
        "--merges", default="", help="CLIP BPE merges file (default: the copy shipped in jaxmm)"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/eval_throughput.json"))
    args = parser.parse_args(argv)
    if args.num_images < 0 or args.repeats < 1:
        parser.error("--num_images must be >= 0 and --repeats >= 1")
    if args.merges and not pathlib.Path(args.merges).is_file():
        parser.error(f"--merges: {args.merges} not found (the OpenAI CLIP BPE merges file)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tokenizer = load_clip_tokenizer(args.merges or None)
    load = os.getloadavg()
    rows = []
    for name in args.models:
        rows.append(benchmark_model(name, args, tokenizer))
        print(f"done: {name}", flush=True)
    result = {
        "benchmark": "benchmarks/eval_throughput.py",
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "repeats": args.repeats,
        "results": rows,
    }
    print(f"\n{result['cpu']}, {result['cpu_cores']} cores, jax {jax.__version__}, ", end="")
    print(f"load average at start {result['load_average_at_start']}\n")
    print(format_table(rows))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
