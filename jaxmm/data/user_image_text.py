"""A tfds builder for a user's images, each with a text and a class: `ImageTextLabelFile`.

For image + text classification (`task='image_text_classification'`): a product photo with
its description, a scan with its note. The file is a CSV with a header

    image,text,label,split
    shoes/01.jpg,"Leather boots, size 42",footwear,train

(`split` optional, other columns ignored, names matched case-insensitively) or JSON Lines

    {"image": "shoes/01.jpg", "text": "Leather boots", "label": "footwear", "split": "train"}

with image paths relative to the file's folder (or `image_root`). Each row is one example,
in the schema of jaxmm's built-in `mm_shapes`:

    image     tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')
    text      tfds.features.Text()
    label     tfds.features.ClassLabel(names=<the classes>)
    image_id  tfds.features.Text(), the image path as written in the file

Usage (the training pipeline does this):

    builder = ImageTextLabelFile("/data/shop/items.csv", data_dir="/data/tfds")
    builder.download_and_prepare()
    source = builder.as_data_source("train")   # dicts of numpy; text comes back as bytes

Rules, as for the caption files of `user_captions` where they apply:
- Classes: `classes` given, in that order (a label outside it is an error); else the labels
  of the kept rows, sorted, numerically when every label is an integer ("2" before "10"), so
  label indices are the same on every machine. A JSON label may be a string or an integer.
- Rows: the same image may appear in several rows (with other texts or labels); each is an
  example. A text may be empty (counted in `info.metadata['num_empty_texts']`); an empty
  image path or label, a line that is not a JSON object, a missing key or a CSV row with the
  wrong number of fields raises one `ValueError` naming the file and line.
- Splits: a row's split (`train`; `validation`|`val`|`valid`|`dev`; `test`; empty, `none`
  or null excludes the row, counted). Rows without one are hashed into train/validation/test
  by their image path with `val_fraction`/`test_fraction` (SHA-256: the same on every run and
  machine, and all rows of an image land in the same split).
- Images: validated, oriented, converted to RGB and shrunk to `max_image_size`; a JPEG that
  needs none of that is kept byte for byte. Missing or undecodable images raise
  `BadImageError` naming the image and the line (`on_bad_image='error'`), or are skipped,
  counted and logged (`on_bad_image='skip'`).
- Where the data goes: `<data_dir>/image_text_label_file/<stem>_<hash>/1.0.0`, the hash
  covering the file's path, size and mtime and every option, so editing the file builds a
  fresh copy.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import re
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds
from absl import logging

from jaxmm.data.user_captions import (
    Record,
    UserDataBuilder,
    _canonical_split,
    _check_encodable,
    _read_utf8,
    hash_split,
    text_name,
)

COLUMNS = ("image", "text", "label")
EXAMPLE_LINE = '{"image": "a.jpg", "text": "a red wool scarf", "label": "clothing"}'
# An example's key travels inside the example from `_example` to `_generate_examples`, which
# takes it out again: the base class keys examples by image path, and here an image may
# appear in several rows.
_KEY = "_key"
# Marks a row whose split is empty/"none"/null: read and checked, then left out.
_EXCLUDED = "excluded"


@dataclasses.dataclass
class LabelledRecord(Record):
    """One row: an image, its text and its class name (`label` is set once classes are known)."""

    text: str = ""
    label_name: str = ""


def _string(value: object, key: str, where: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        what = "a string" if empty_ok else "a non-empty string"
        raise ValueError(f"{where}: {key!r} must be {what}, got {value!r:.60}")
    _check_encodable(value, where)
    return value


def _label(value: object, where: str) -> str:
    # bool is an int to Python, but `true` is no class name a user meant.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _string(value, "label", where).strip()


def _row(image, text, label, split, has_split: bool, where: str) -> LabelledRecord:
    image = _string(image, "image", where).strip()
    record = LabelledRecord(
        image, [], None, where, text=_string(text, "text", where, empty_ok=True)
    )
    record.label_name = _label(label, where)
    if has_split:
        record.split = _canonical_split(split, where) or _EXCLUDED
    return record


def _read_csv(path: pathlib.Path) -> Iterator[LabelledRecord]:
    reader = csv.reader(io.StringIO(_read_utf8(path), newline=""))
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path}: empty; expected a header line such as 'image,text,label'")
    names = [name.strip().lower() for name in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"{path}:1: header {header} lacks {', '.join(map(repr, missing))}; columns "
            f"{', '.join(map(repr, COLUMNS))} are needed, 'split' is optional"
        )
    index = {name: names.index(name) for name in (*COLUMNS, "split") if name in names}
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{where}: {len(row)} fields, header has {len(header)} (an unquoted comma in "
                "a text? quote the field)"
            )
        fields = {name: row[i] for name, i in index.items()}
        yield _row(*(fields[c] for c in COLUMNS), fields.get("split"), "split" in index, where)


def _read_jsonl(path: pathlib.Path) -> Iterator[LabelledRecord]:
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends.
    for lineno, line in enumerate(_read_utf8(path).split("\n"), start=1):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [key for key in COLUMNS if key not in obj]
        if missing:
            raise ValueError(
                f"{where}: missing {', '.join(map(repr, missing))}; each line needs "
                f"{', '.join(map(repr, COLUMNS))}, such as {EXAMPLE_LINE}"
            )
        yield _row(*(obj[c] for c in COLUMNS), obj.get("split"), "split" in obj, where)


def read_rows(path: pathlib.Path) -> list[LabelledRecord]:
    """Every row of a `.csv` or `.jsonl` file, in file order, checked.

    `split` is None for rows to hash and `"excluded"` for rows whose split excludes them.

    Raises:
        ValueError: an empty file or a bad line (named `path:line`).
    """
    reader = _read_jsonl if path.suffix.lower() == ".jsonl" else _read_csv
    rows = list(reader(path))
    if not rows:
        raise ValueError(f"{path}: no rows; expected one example per line, such as {EXAMPLE_LINE}")
    return rows


def sorted_classes(labels: Sequence[str]) -> list[str]:
    """The distinct labels, sorted; numerically when every one is an integer."""
    distinct = set(labels)
    if all(re.fullmatch(r"-?\d+", label) for label in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


class ImageTextLabelFile(UserDataBuilder, skip_registration=True):
    """Images, each with a text and a class, listed in a user's CSV or JSONL file."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        data_dir: str | os.PathLike | None = None,
        image_root: str | os.PathLike | None = None,
        classes: Sequence[str] | None = None,
        max_image_size: int | None = 512,
        on_bad_image: str = "error",
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        num_workers: int | None = None,
    ):
        """Reads and checks the file; `download_and_prepare()` then encodes every image.

        Args:
            path: the `.csv` or `.jsonl` file.
            data_dir: tfds data root (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
            image_root: folder that relative image paths start from (default: `path`'s folder).
            classes: the class names in label order; default: the file's labels, sorted.
            max_image_size: longest image side kept; None stores the original size.
            on_bad_image: 'error' raises `BadImageError`; 'skip' drops and counts the row.
            val_fraction: share of images hashed into 'validation' for rows without a split.
            test_fraction: share hashed into 'test' for rows without a split.
            num_workers: image-encoding threads (default: CPU count, at most 8).

        Raises:
            FileNotFoundError: `path` does not exist.
            ValueError: not a `.csv` or `.jsonl` file, a bad line, a label outside `classes`,
                or a bad option.
        """
        source = pathlib.Path(path).expanduser().resolve()
        if not source.is_file():
            raise FileNotFoundError(f"image-text file not found: {source}")
        if source.suffix.lower() not in (".csv", ".jsonl"):
            raise ValueError(f"{source}: expected a .csv or .jsonl file")
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"bad split fractions: val {val_fraction}, test {test_fraction}")
        if isinstance(classes, str):
            raise ValueError(f"classes must be a list of class names, got the string {classes!r}")
        root = pathlib.Path(image_root).expanduser().resolve() if image_root else source.parent
        rows = read_rows(source)
        self._records = [r for r in rows if r.split != _EXCLUDED]
        self._num_excluded = len(rows) - len(self._records)
        if not self._records:
            raise ValueError(f"{source}: every row is excluded by its split")
        self._classes = self._label_records(classes)
        self._path, self._image_root = source, root
        self._fractions = (val_fraction, test_fraction)
        init_kwargs = dict(
            path=path,
            data_dir=data_dir,
            image_root=image_root,
            classes=classes,
            max_image_size=max_image_size,
            on_bad_image=on_bad_image,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            num_workers=num_workers,
        )
        self._setup(
            sources=[source],
            options=dict(image_root=root, classes=self._classes, fractions=self._fractions),
            init_kwargs=init_kwargs,
            max_image_size=max_image_size,
            on_bad_image=on_bad_image,
            num_workers=num_workers,
            data_dir=data_dir,
        )

    def _label_records(self, classes: Sequence[str] | None) -> list[str]:
        """The class names; sets each record's `label` index."""
        if classes is None:
            names = sorted_classes([r.label_name for r in self._records])
        else:
            names = [str(c).strip() for c in classes]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated or not names or not all(names):
                raise ValueError(f"classes must be distinct, non-empty names, got {list(classes)}")
        index = {name: i for i, name in enumerate(names)}
        for record in self._records:
            if record.label_name not in index:
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                raise ValueError(
                    f"{record.where}: label {record.label_name!r} is not one of the "
                    f"{len(names)} classes given ({shown})"
                )
            record.label = index[record.label_name]
        return names

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=self._classes),
                    "image_id": tfds.features.Text(),
                }
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _example(self, record: LabelledRecord, image: bytes) -> dict:
        return {
            "image": image,
            "text": record.text,
            "label": record.label,
            "image_id": text_name(record.image),
            _KEY: record.where,
        }

    def _generate_examples(self, records: list[Record], image_root: pathlib.Path):
        # Keyed by file and line: unique per row, and the same on every build.
        for _, example in super()._generate_examples(records, image_root):
            yield example.pop(_KEY), example

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only.
        records = self._records
        expected = {r.split for r in records}
        if None in expected:
            val, test = self._fractions
            expected |= (
                {"train"} | ({"validation"} if val else set()) | ({"test"} if test else set())
            )
        for record in records:
            if record.split is None:
                record.split = hash_split(record.image, *self._fractions)
        num_empty = sum(not r.text.strip() for r in records)
        self.info.metadata.update(
            sources=[str(self._path)],
            num_excluded_rows=self._num_excluded,
            num_empty_texts=num_empty,
            num_skipped_images=0,
            skipped_images=[],
        )
        if self._num_excluded:
            logging.warning("%s: %d rows excluded by their split", self._path, self._num_excluded)
        if num_empty:
            logging.warning("%s: %d rows have an empty text", self._path, num_empty)
        by_split = self._split_dict(records, str(self._path), sorted(expected - {None}))
        return {s: self._generate_examples(rs, self._image_root) for s, rs in by_split.items()}
