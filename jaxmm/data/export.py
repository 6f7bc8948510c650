"""Export examples of the built-in dataset as image files and a caption file:
`python -m jaxmm.data.export`.

    python -m jaxmm.data.export --dataset=shapes --split=train --num=500 --out=my_captions/

writes `my_captions/images/train_000000.jpg`, ... and `my_captions/captions.csv` with a header
`image,caption` and one row per caption (image paths relative to the CSV), which is the layout
the user-data builder reads (`configs/clip_captions.py` with
`--config.data.builder_kwargs.path=my_captions/captions.csv`). It is a real collection to try
that path on with no download, and a template for laying out your own images.

Examples are the ones `clip_shapes` stores (a pure function of the split and the index; see
`jaxmm.data.shapes`), rendered at `--image_size` (default 64, the size `clip_captions.py`
trains at) and saved as JPEG. The CSV has no split column, so the builder sends 10% of the
images to validation by a hash of their path.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import pathlib
import sys
from collections.abc import Sequence

from PIL import Image

from jaxmm.data import shapes

# Export name -> the clip_shapes builder config it renders.
DATASETS = {"shapes": "default", "shapes_multi": "multi"}
CAPTIONS_FILE = "captions.csv"
IMAGES_DIR = "images"
JPEG_QUALITY = 95


def export_shapes(
    out: str | pathlib.Path,
    *,
    num: int,
    split: str = "train",
    dataset: str = "shapes",
    image_size: int = 64,
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes `num` examples of `split` as JPEGs under `out/images/` and `out/captions.csv`.

    Args:
        out: the folder to write (created if needed).
        num: how many examples, the split's first `num` (indices 0 .. num-1).
        split: 'train', 'validation' or 'test'.
        dataset: a key of `DATASETS`.
        image_size: side of the square images in pixels.
        overwrite: replace an existing `captions.csv` in `out`.

    Returns:
        The path of the caption file.

    Raises:
        ValueError: a bad option, or `out` already holds a caption file and not `overwrite`.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r}: choose one of {sorted(DATASETS)}")
    if split not in shapes.SPLITS:
        raise ValueError(f"split {split!r}: choose one of {list(shapes.SPLITS)}")
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 px, got {image_size}")
    out = pathlib.Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    captions_file = out / CAPTIONS_FILE
    if captions_file.exists() and not overwrite:
        raise ValueError(
            f"out: {captions_file} already exists; choose another folder or pass --overwrite"
        )
    base = next(c for c in shapes.ClipShapes.BUILDER_CONFIGS if c.name == DATASETS[dataset])
    # Radii are fractions of the image size, so a larger image is the same scene drawn finer.
    config = dataclasses.replace(base, image_size=image_size)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(num):
        example = shapes.generate_example(config, split, index)
        name = f"{IMAGES_DIR}/{split}_{index:06d}.jpg"
        # 4:4:4 (no chroma subsampling): at 64 px, halving the colour resolution smears the
        # colour of a shape's edge, and colour is what the captions are about.
        Image.fromarray(example["image"]).save(
            out / name, format="JPEG", quality=JPEG_QUALITY, subsampling=0
        )
        rows += [(name, caption) for caption in example["captions"]]
    # Written last and whole, so a folder with a caption file always has all its images.
    partial = captions_file.with_suffix(".csv.tmp")
    with partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    partial.replace(captions_file)
    return captions_file


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(
        prog="python -m jaxmm.data.export",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
    )
    parser.add_argument(
        "--dataset",
        default="shapes",
        choices=sorted(DATASETS),
        help="shapes: one object per image; shapes_multi: one to three in train images",
    )
    parser.add_argument("--split", default="train", choices=list(shapes.SPLITS))
    parser.add_argument("--num", type=int, default=500, help="examples to export (default 500)")
    parser.add_argument("--out", required=True, help="folder for images/ and captions.csv")
    parser.add_argument("--image_size", type=int, default=64, help="image side in pixels")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing captions.csv in --out"
    )
    args = parser.parse_args(argv)
    try:
        path = export_shapes(
            args.out,
            num=args.num,
            split=args.split,
            dataset=args.dataset,
            image_size=args.image_size,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as error:
        parser.error(str(error))  # one line and exit status 2, like any bad argument
    print(f"wrote {args.num} images and {path}", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
