"""Text-to-image search on the built-in scenes: precision@10 of "a photo of a red circle".

    python benchmarks/search_precision.py --workdir=runs/clip_small \\
        [--num=480] [--template="a photo of {article} {colour} {shape}"] \\
        [--pairs "red circle" ...] [--out=benchmarks/results/search_precision.json]

Exports the first `--num` scenes of the `clip_shapes` test split with `jaxmm.data.export`
(one object per image, the 48 colour-shape classes in turn: 10 images of each class with the
default 480), indexes them as `python -m jaxmm.search` does and searches the template filled
with each colour-shape pair: by default the 8 pairs held out of training and 8 seen ones (one
of each colour). A hit is an image whose captions name both the query's colour and its shape.
Prints a table, then JSON (to `--out` if given): precision@10 per query, its means over the
held-out, the seen and all pairs, and chance (the share of images of one class).
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

from jaxmm import search  # noqa: E402
from jaxmm.data import export, shapes  # noqa: E402
from jaxmm.inference import Encoders, load_clip  # noqa: E402

K = 10
DEFAULT_TEMPLATE = "a photo of {article} {colour} {shape}"
# Shape (5i + 2) mod 6 of colour i is held out of training (jaxmm.data.shapes); (5i + 3) mod 6
# is a seen shape of the same colour, so both halves cover every colour.
SEEN_PAIRS = tuple((c, shapes.SHAPES[(5 * i + 3) % 6]) for i, c in enumerate(shapes.COLOUR_NAMES))


def image_labels(captions_file: pathlib.Path) -> dict[str, tuple[set[str], set[str]]]:
    """`{image path relative to the caption file: (colours, shapes)}` its captions name."""
    labels: dict[str, tuple[set[str], set[str]]] = collections.defaultdict(lambda: (set(), set()))
    with captions_file.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            colours, names = labels[row["image"]]
            colours.update(shapes.caption_words(row["caption"], shapes.COLOUR_NAMES))
            names.update(shapes.caption_words(row["caption"], shapes.SHAPES))
    return dict(labels)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def parse_pairs(texts: list[str] | None) -> list[tuple[str, str]]:
    """`["red circle", ...]` -> `[("red", "circle"), ...]`; default held-out then seen pairs."""
    if not texts:
        return list(shapes.HELD_OUT_PAIRS) + list(SEEN_PAIRS)
    pairs = []
    for text in texts:
        words = text.split()
        if len(words) != 2 or words[0] not in shapes.COLOUR_NAMES or words[1] not in shapes.SHAPES:
            raise ValueError(
                f"--pairs: {text!r} is not 'COLOUR SHAPE' with a colour of "
                f"{shapes.COLOUR_NAMES} and a shape of {shapes.SHAPES}"
            )
        pairs.append((words[0], words[1]))
    return pairs


def run(args: argparse.Namespace, pairs: list[tuple[str, str]], folder: pathlib.Path) -> dict:
    captions_file = folder / export.CAPTIONS_FILE
    if not captions_file.is_file():
        export.export_shapes(folder, num=args.num, split="test", image_size=args.image_size)
    labels = image_labels(captions_file)
    images = folder / export.IMAGES_DIR
    clip = load_clip(workdir=args.workdir)
    encoders = Encoders(clip, args.batch_size)
    index, _ = search.update_index(images, encoders, folder / "index.npz", "float32")
    queries = [args.template.format(article=article(c), colour=c, shape=s) for c, s in pairs]
    results = search.search(index, encoders.texts(queries), K)

    rows = []
    for (colour, shape), query, hits in zip(pairs, queries, results, strict=True):
        found = [
            colour in labels[f"{export.IMAGES_DIR}/{name}"][0]
            and shape in labels[f"{export.IMAGES_DIR}/{name}"][1]
            for name, _ in hits
        ]
        heldout = (colour, shape) in shapes.HELD_OUT_PAIRS
        rows.append(
            {"query": query, "heldout": heldout, "precision_at_10": sum(found) / len(found)}
        )
    mean = lambda selected: sum(r["precision_at_10"] for r in selected) / max(1, len(selected))
    per_class = collections.Counter(
        (min(c), min(s)) for c, s in labels.values() if len(c) == 1 and len(s) == 1
    )
    return {
        "workdir": str(args.workdir),
        "model": clip.source,
        "num_images": len(index.paths),
        "template": args.template,
        "k": K,
        "queries": rows,
        "mean_precision_at_10": mean(rows),
        "mean_heldout": mean([r for r in rows if r["heldout"]]),
        "mean_seen": mean([r for r in rows if not r["heldout"]]),
        "chance": max(per_class.values(), default=0) / max(1, len(index.paths)),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "date": datetime.date.today().isoformat(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained jaxmm CLIP run")
    parser.add_argument("--num", type=int, default=480, help="test-split scenes to search")
    parser.add_argument("--image_size", type=int, default=64, help="exported image side (px)")
    parser.add_argument(
        "--template", default=DEFAULT_TEMPLATE, help="the query: {article} {colour} {shape}"
    )
    parser.add_argument("--pairs", nargs="+", help='colour-shape pairs, e.g. "red circle"')
    parser.add_argument("--batch_size", type=int, default=64, help="images per encoder call")
    parser.add_argument(
        "--images_dir", help="export the scenes here and keep them (default: a temporary folder)"
    )
    parser.add_argument("--out", help="write the JSON here too")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    pairs = parse_pairs(args.pairs)
    if args.images_dir:
        report = run(args, pairs, pathlib.Path(args.images_dir))
    else:
        with tempfile.TemporaryDirectory() as folder:
            report = run(args, pairs, pathlib.Path(folder))
    width = max(len(row["query"]) for row in report["queries"])
    for row in report["queries"]:
        mark = "  (held out)" if row["heldout"] else ""
        print(f"  {row['query']:{width}s}  {row['precision_at_10']:.2f}{mark}")
    print(
        f"precision@{K}: {report['mean_precision_at_10']:.3f} (held out "
        f"{report['mean_heldout']:.3f}, seen {report['mean_seen']:.3f}; chance "
        f"{report['chance']:.3f}) over {report['num_images']} images"
    )
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    else:
        print(text, end="")
    return report


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
