"""Images/s of the real training input pipeline, per CPU core and with all of them.

    python benchmarks/input_pipeline.py --captions=CAPTIONS [--image_size=224] [--batch=64]
        [--batches=10] [--train_step_json=benchmarks/results/train_step_gpu.json] [--out=...json]

`--captions` is a caption file in the user-data layout (CSV/TSV/JSONL beside its images):
the 1,000 real Flickr8k photos (at most 256 px) that BENCHMARKS.md measured, your own, or the
built-in dataset exported as JPEGs (`python -m jaxmm.data.export --dataset=shapes --num=1000
--out=shapes_1000/`, then `--captions=shapes_1000/captions.csv`; its 64 px scenes decode faster
than photos, so quote figures measured on photos). The file's train split (every image when
it has no split column) goes through the user-data builder (prepared once into `--data_dir`)
and `jaxmm.data.pipeline.train_iterator` with `image_text_example` exactly as
`configs/clip_captions.py` trains: JPEG decode, random-resized crop to `--image_size`, flip,
normalisation, a random caption tokenised by the OpenAI CLIP BPE tokenizer shipped in jaxmm
(context 77). It times `--batches` batches after two warm-up ones with `num_threads=1` and with
one thread per core, and prints images/s beside the jaxmm train step's rate from a
`benchmarks/train_step.py` JSON, when given: a pipeline slower than the step starves the
accelerator. Needs tensorflow-datasets, grain, ml_collections and tokenizers.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ beside jaxmm

import grain  # noqa: E402

from configs import clip_captions  # noqa: E402
from jaxmm.data import datasets, pipeline  # noqa: E402
from jaxmm.data.tokenizer import load_clip_tokenizer  # noqa: E402


def images_per_second(source, example_fn, data_config, batch: int, batches: int) -> float:
    """Images/s of `train_iterator` over `batches` batches, after two warm-up batches."""
    iterator = pipeline.train_iterator(source, example_fn, data_config, batch_size=batch, seed=0)
    for _ in range(2):  # starts the reader threads and fills the prefetch buffer
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batch * batches / (time.perf_counter() - start)


def train_step_rates(path: str | None) -> dict[str, float]:
    """jaxmm's images/s per model from a train_step.py JSON."""
    if not path:
        return {}
    rows = json.loads(pathlib.Path(path).read_text())["rows"]
    return {
        r["model"]: r["images_per_s"]
        for r in rows
        if r["framework"] == "jaxmm" and "images_per_s" in r
    }


def main(args: argparse.Namespace) -> None:
    captions = pathlib.Path(args.captions).expanduser()
    if not captions.is_file():
        raise SystemExit(f"--captions: {captions} not found (a CSV/TSV/JSONL caption file)")
    config = clip_captions.get_config()
    data = config.data
    data.data_dir = args.data_dir
    # The JPEGs as they are (Flickr8k's are at most 500 px): decoding them is part of the cost.
    data.builder_kwargs.update(path=str(captions), max_image_size=None, val_fraction=0.0)
    data.image_size, data.context_length, data.flip = args.image_size, 77, True
    source = datasets.prepare_builder(data).as_data_source("train")
    tokenizer = load_clip_tokenizer()
    example_fn = functools.partial(pipeline.image_text_example, tokenizer=tokenizer, config=data)

    cores = os.cpu_count() or 1
    rates = {}
    for threads in sorted({1, cores}):
        data.num_threads = threads
        rates[threads] = images_per_second(source, example_fn, data, args.batch, args.batches)
    print(f"\n{'threads':>8s} {'img/s':>9s} {'img/s per core':>15s}")
    for threads, rate in rates.items():
        print(f"{threads:8d} {rate:9.1f} {rate / min(threads, cores):15.1f}")
    steps = train_step_rates(args.train_step_json)
    for model, rate in steps.items():
        cores_needed = rate / rates[1]
        print(f"{model}: the train step takes {rate:.0f} img/s = {cores_needed:.1f} cores' worth")

    report = {
        "benchmark": "benchmarks/input_pipeline.py",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {cores} cores, {platform.platform()}",
        "versions": {"python": platform.python_version(), "grain": grain.__version__},
        "image_size": args.image_size,
        "batch": args.batch,
        "images_per_s_by_threads": rates,
        "train_step_images_per_s": steps,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--captions", required=True, help="caption file (CSV/TSV/JSONL) of the images to read"
    )
    parser.add_argument("--data_dir", default="/tmp/jaxmm_bench_tfds", help="tfds cache")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per setting")
    parser.add_argument("--train_step_json", help="a train_step.py result to compare against")
    parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
