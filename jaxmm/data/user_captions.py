"""tfds builders that turn a user's own image-caption collection into a dataset, no code needed.

Two layouts, one example schema (shared with jaxmm's built-in caption datasets):

    image     tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')
    captions  tfds.features.Sequence(tfds.features.Text()), every caption of the image
    image_id  tfds.features.Text(), the image path as written in the source file

- `ImageCaptionFile(path)`: a `.csv`/`.tsv` (header required; one row per (image, caption);
  columns `image`|`image_path`|`filepath`|`file_name`, `caption`|`text`|`title`, optional
  `split`|`official_split`) or a `.jsonl` (`{"image": ..., "caption": "..."}` or
  `{"image": ..., "captions": [...]}`, optional `"split"`/`"official_split"`). Rows of one image
  are grouped into one example, captions in file order.
- `CocoCaptions(annotations, image_root)`: COCO caption JSON files, one per split, or COCO's
  folder as downloaded (`annotations/captions_{train,val}2017.json`, `train2017/`, `val2017/`).

Usage (the training pipeline does this):

    builder = ImageCaptionFile("/data/pets/captions.csv", data_dir="/data/tfds")
    builder.download_and_prepare()
    source = builder.as_data_source("train")   # dicts of numpy; text comes back as bytes

Rules, chosen once:
- Splits: a split column/key wins (`train`; `validation`|`val`|`valid`|`dev`; `test`; an empty,
  `none` or null value excludes the image, counted in `info.metadata`). Without one, each image
  goes to a split by a SHA-256 of its path string, so assignment is the same on every run and
  machine and an image never changes split when others are added (a JSONL line without a split
  key is hashed too). Empty splits are not written; reading one raises a `ValueError` naming
  the split, the source and the data directory. Empty captions are dropped
  (`num_empty_captions`); an image left with none is excluded (`num_excluded_images`).
- Images: decoded with Pillow (anything it reads), EXIF orientation applied, transparency
  composited on white, 16-bit scaled to 8-bit, converted to RGB, shrunk so the longer side is at
  most `max_image_size` (None keeps the size), stored as JPEG quality 95. A JPEG that is already
  RGB, upright and small enough is stored byte for byte (no second lossy pass).
- Image paths: absolute, or relative to `image_root` (default: the caption file's folder); a
  relative path missing there is also looked up under `image_root/images/`, the common layout
  of a caption file beside an `images/` folder. A file name that is not UTF-8 is read as it
  is and stored in `image_id` with its odd bytes written `\\xNN`.
- Bad images (missing, truncated, not an image): `on_bad_image='error'` raises `BadImageError`
  naming the image and the caption-file line; `'skip'` drops them, logs how many with the first
  few names, and records `num_skipped_images`/`skipped_images` in `info.metadata`.
- Caption files must be UTF-8 (a BOM is fine); other bytes raise `ValueError` naming file and
  line rather than guessing an encoding. TSV is read without quote handling, since captions
  often hold bare `"`.
- Where the data goes: `<data_dir>/<image_caption_file|coco_captions>/<stem>_<hash>/1.0.0`,
  the hash covering the source files' absolute paths, sizes and mtimes plus every builder
  option. Editing the caption file therefore builds a fresh copy (the old folder stays until
  deleted); editing only images does not -- delete the folder to rebuild. A prepared copy reads
  without the sources via `tfds.builder_from_directory(folder)`.

The builders skip tfds's registry (`coco_captions` is also a tfds catalogue name); construct
them directly.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image, ImageOps

SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
}
EXCLUDED_SPLIT_VALUES = ("", "none", "null")
IMAGE_KEYS = ("image", "image_path", "filepath", "file_name")
CAPTION_KEYS = ("caption", "text", "title")
CAPTION_LIST_KEYS = ("captions", "texts")
SPLIT_KEYS = ("split", "official_split")
JPEG_QUALITY = 95
MAX_LOGGED_SKIPS = 10


class BadImageError(ValueError):
    """An image of the collection is missing or cannot be decoded."""


@dataclasses.dataclass
class Record:
    """One image and its captions, as read from the source file."""

    image: str  # Path as written; becomes `image_id` and the split-hash input.
    captions: list[str]
    split: str | None  # None: assign by hash.
    where: str  # "file:line" for error messages.
    label: int | None = None  # the class index, for classification layouts (image folders)


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "image_id": tfds.features.Text(),
        }
    )


# --- reading caption files ---


def _read_utf8(path: pathlib.Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start}); re-save the file as UTF-8"
        ) from None


def _check_encodable(text: str, where: str) -> None:
    """Refuses text UTF-8 cannot store: a JSON escape of a lone surrogate, such as "\\ud800"."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{where}: {text!r:.60} holds {text[e.start]!r}, a lone surrogate escape that is "
            "not a character; fix the text"
        ) from None


def _canonical_split(value: object, where: str) -> str | None:
    """A split name, or None for an excluded image."""
    text = "" if value is None else str(value).strip().lower()
    if text in EXCLUDED_SPLIT_VALUES:
        return None
    if text not in SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split {value!r}; use one of {sorted(SPLIT_ALIASES)}")
    return SPLIT_ALIASES[text]


def _pick_key(keys: Iterable[str], wanted: str | None, aliases: tuple[str, ...]) -> str | None:
    """The key named `wanted`, or the first alias present (case-insensitive)."""
    by_lower = {k.strip().lower(): k for k in keys}
    for name in (wanted,) if wanted else aliases:
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


class _Grouper:
    """Collects captions per image in first-seen order; tracks the split column."""

    def __init__(self):
        self.records: dict[str, Record] = {}
        self.excluded_images: set[str] = set()
        self.num_empty_captions = 0

    def add(self, image: object, captions: list, split: str | None, has_split: bool, where: str):
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{where}: missing image path")
        for caption in captions:
            if not isinstance(caption, str):
                raise ValueError(f"{where}: caption must be a string, got {caption!r:.60}")
        for text in (image, *captions):
            _check_encodable(text, where)
        kept = [c for c in captions if c.strip()]
        self.num_empty_captions += len(captions) - len(kept)
        image = image.strip()
        if has_split and split is None:
            self.excluded_images.add(image)
            return
        if image not in self.records:
            self.records[image] = Record(image, [], split, where)
        record = self.records[image]
        if record.split != split:
            raise ValueError(
                f"{where}: image {image} is in split {split}, but in {record.split} at "
                f"{record.where}"
            )
        record.captions.extend(kept)


def _read_delimited(path: pathlib.Path, keys: tuple[str | None, str | None, str | None]):
    text = _read_utf8(path)
    tsv = path.suffix.lower() == ".tsv"
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter="\t" if tsv else ",",
        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
    )
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path}: empty; expected a header line such as 'image,caption'")
    image_col = _pick_key(header, keys[0], IMAGE_KEYS)
    caption_col = _pick_key(header, keys[1], CAPTION_KEYS)
    split_col = _pick_key(header, keys[2], SPLIT_KEYS)
    if image_col is None or caption_col is None:
        raise ValueError(
            f"{path}:1: header {header} needs an image column ({'/'.join(IMAGE_KEYS)}) and a "
            f"caption column ({'/'.join(CAPTION_KEYS)})"
        )
    if keys[2] and split_col is None:
        raise ValueError(f"{path}:1: split column {keys[2]!r} not in header {header}")
    index = {name: header.index(name) for name in (image_col, caption_col, split_col) if name}
    grouper = _Grouper()
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{where}: {len(row)} fields, header has {len(header)} (an unquoted "
                f"{'tab' if tsv else 'comma'} in a caption?)"
            )
        split = _canonical_split(row[index[split_col]], where) if split_col else None
        grouper.add(
            row[index[image_col]], [row[index[caption_col]]], split, split_col is not None, where
        )
    return grouper


def _read_jsonl(path: pathlib.Path, keys: tuple[str | None, str | None, str | None]):
    grouper = _Grouper()
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
        image_key = _pick_key(obj, keys[0], IMAGE_KEYS)
        caption_key = _pick_key(obj, keys[1], CAPTION_KEYS + CAPTION_LIST_KEYS)
        if image_key is None or caption_key is None:
            raise ValueError(f"{where}: needs an image key and a caption key, got {sorted(obj)}")
        captions = obj[caption_key]
        captions = captions if isinstance(captions, list) else [captions]
        split_key = _pick_key(obj, keys[2], SPLIT_KEYS)
        has_split = split_key is not None or keys[2] is not None
        split = _canonical_split(obj.get(split_key), where) if has_split else None
        grouper.add(obj[image_key], captions, split, has_split, where)
    return grouper


def _read_coco(path: pathlib.Path, split: str) -> list[Record]:
    try:
        data = json.loads(_read_utf8(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: not a COCO captions file (needs 'images' and 'annotations')")
    records: dict[object, Record] = {}
    for image in data["images"]:
        records[image["id"]] = Record(
            image["file_name"], [], split, f"{path}: image id {image['id']}"
        )
    for i, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in records:
            raise ValueError(
                f"{path}: annotation {i} refers to unknown image {ann.get('image_id')}"
            )
        records[ann["image_id"]].captions.append(ann["caption"])
    return list(records.values())


# --- images ---


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit greyscale (PNG/TIFF): Pillow's convert would clip at 255, so rescale.
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.round(grey).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        # White, not black, behind transparent pixels: what a viewer shows for logos/cut-outs.
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _encode_image(data: bytes, max_image_size: int | None) -> bytes:
    """Validates, orients, converts to RGB and shrinks one encoded image; returns JPEG bytes.

    Raises:
        Exception: whatever Pillow raises for undecodable data (the caller labels it).
    """
    with Image.open(io.BytesIO(data)) as img:
        size, fmt = img.size, img.format
        if max_image_size and fmt == "JPEG":
            # DCT-domain downscale while decoding: 4-16x faster for big photos; the box of
            # 2x the target keeps the final LANCZOS resize doing the visible work.
            img.draft(None, (2 * max_image_size, 2 * max_image_size))
        img.load()  # Decodes everything: truncated files fail here, not in training.
        fits = not max_image_size or max(size) <= max_image_size
        upright = img.getexif().get(0x0112, 1) == 1  # EXIF orientation tag
        if fmt == "JPEG" and img.mode == "RGB" and fits and upright:
            return data
        img = _to_rgb(ImageOps.exif_transpose(img))
        if max_image_size and max(img.size) > max_image_size:
            img.thumbnail((max_image_size, max_image_size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def _ordered_map(fn: Callable, items: list, workers: int) -> Iterator:
    """`map(fn, items)` on a thread pool, in order, at most 4 * workers items in flight.

    Pillow releases the GIL while decoding, resizing and encoding, so threads scale.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


# --- builders ---


def _fingerprint(files: Iterable[pathlib.Path], options: dict) -> str:
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps({"files": stats, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def text_name(image: str) -> str:
    """`image` as valid UTF-8 text: a file name holding bytes that are not UTF-8 (which Python
    keeps as surrogate escapes) shows them as `\\xNN`, so stored ids and keys never fail to encode.
    """
    return image.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def hash_split(image: str, val_fraction: float, test_fraction: float) -> str:
    # surrogateescape hashes a non-UTF-8 file name's own bytes; UTF-8 names hash as before.
    digest = hashlib.sha256(image.encode("utf-8", "surrogateescape")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + val_fraction else "train"


class UserDataBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery of the user-data builders (caption files, COCO, image folders):
    per-source config, image encoding, skip accounting, pickling.

    Subclasses list `Record`s per split and may override `_info` and `_example` for another
    example schema.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # tfds 4.9.10 works out a packaged builder's file through `importlib_resources`, which it
    # does not install (ModuleNotFoundError in download_and_prepare); tell it directly.
    code_path = epath.Path(__file__)

    def _setup(
        self,
        *,
        sources: list[pathlib.Path],
        options: dict,
        init_kwargs: dict,
        max_image_size: int | None,
        on_bad_image: str,
        num_workers: int | None,
        data_dir: str | os.PathLike | None,
        stem: str | None = None,
    ) -> None:
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        if max_image_size is not None and max_image_size < 1:
            raise ValueError(f"max_image_size must be positive or None, got {max_image_size}")
        self._init_kwargs = init_kwargs
        self._max_image_size = max_image_size
        self._on_bad_image = on_bad_image
        self._num_workers = num_workers or min(8, os.cpu_count() or 1)
        self._sources = sources
        options = dict(options, max_image_size=max_image_size, on_bad_image=on_bad_image)
        stem = stem or sources[0].stem
        stem = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")[:40] or "data"
        # An unpickled builder keeps its original folder even if the source changed since.
        name = getattr(self, "_pickled_config_name", None) or (
            f"{stem}_{_fingerprint(sources, options)}"
        )
        config = tfds.core.BuilderConfig(
            name=name,
            description=f"Built from {', '.join(map(str, sources))}",
        )
        super().__init__(data_dir=data_dir, config=config, file_format="array_record")

    # tfds pickles a builder as its constructor arguments; ours differ from the base class's.
    def __getstate__(self):
        return {"init_kwargs": self._init_kwargs, "config_name": self.builder_config.name}

    def __setstate__(self, state):
        self._pickled_config_name = state["config_name"]
        self.__init__(**state["init_kwargs"])

    def as_data_source(self, split, *args, **kwargs):
        """tfds's reader, with a clear error for a split no image went to (never written)."""
        name = str(split).split("[")[0]  # "validation[:10%]" reads from "validation"
        if self.info.splits and "+" not in name and name not in self.info.splits:
            raise ValueError(
                f"split {name!r} of {', '.join(map(str, self._sources))} is empty: no image went "
                f"to it, so it was not written to {self.data_dir} (splits there: "
                f"{sorted(self.info.splits)}). Images go to splits by the split column or split "
                "folders, else by a hash with val_fraction/test_fraction: add images, give "
                "splits, or read another split."
            )
        return super().as_data_source(split, *args, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=_features(),
            metadata=tfds.core.MetadataDict(),
        )

    def _example(self, record: Record, image: bytes) -> dict:
        """The stored example for `record` with its encoded image."""
        return {"image": image, "captions": record.captions, "image_id": text_name(record.image)}

    def _record_exclusions(self, num_excluded_images: int, num_empty_captions: int) -> None:
        metadata = self.info.metadata
        metadata.update(
            sources=[str(s) for s in self._sources],
            num_excluded_images=num_excluded_images,
            num_empty_captions=num_empty_captions,
            num_skipped_images=0,
            skipped_images=[],
        )
        if num_excluded_images:
            logging.warning("%d images excluded (split none, or no captions)", num_excluded_images)
        if num_empty_captions:
            logging.warning("%d empty captions dropped", num_empty_captions)

    def _split_dict(
        self, records: list[Record], what: str, expected: Iterable[str]
    ) -> dict[str, list[Record]]:
        by_split: dict[str, list[Record]] = {}
        for record in records:
            by_split.setdefault(record.split, []).append(record)
        if not by_split:
            raise ValueError(f"{what}: no images (no rows, or every row excluded)")
        for split in expected:
            if split not in by_split:
                logging.warning("%s: no images in split %r; it will not exist", what, split)
        return by_split

    def _generate_examples(self, records: list[Record], image_root: pathlib.Path):
        def load(record: Record):
            path = pathlib.Path(record.image)
            if not path.is_absolute():
                path = image_root / path
                if not path.exists() and (image_root / "images" / record.image).exists():
                    path = image_root / "images" / record.image
            try:
                return path, _encode_image(path.read_bytes(), self._max_image_size), None
            except FileNotFoundError:
                return path, None, "file not found"
            except Image.UnidentifiedImageError:
                return path, None, "not an image Pillow can read"
            except Exception as e:  # Any failure on user data is a bad image, whatever raised.
                return path, None, f"{type(e).__name__}: {e}"

        split = records[0].split if records else "?"
        skipped = []
        for record, (path, data, error) in zip(
            records, _ordered_map(load, records, self._num_workers), strict=True
        ):
            if error is not None:
                message = f"{record.where}: image {path}: {error}"
                if self._on_bad_image == "error":
                    raise BadImageError(f"{message}. Fix or remove it, or use on_bad_image='skip'.")
                skipped.append(message)
                continue
            yield text_name(record.image), self._example(record, data)
        if skipped and len(skipped) == len(records):
            raise BadImageError(f"split {split}: all {len(records)} images are bad: {skipped[0]}")
        if skipped:
            logging.warning(
                "split %s: skipped %d bad images, first: %s",
                split,
                len(skipped),
                "; ".join(skipped[:MAX_LOGGED_SKIPS]),
            )
            metadata = self.info.metadata
            metadata["num_skipped_images"] += len(skipped)
            room = MAX_LOGGED_SKIPS - len(metadata["skipped_images"])
            metadata["skipped_images"] += skipped[: max(room, 0)]


class ImageCaptionFile(UserDataBuilder, skip_registration=True):
    """Images and captions listed in a user's CSV, TSV or JSONL file."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        data_dir: str | os.PathLike | None = None,
        image_root: str | os.PathLike | None = None,
        max_image_size: int | None = 512,
        on_bad_image: str = "error",
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        image_key: str | None = None,
        caption_key: str | None = None,
        split_key: str | None = None,
        num_workers: int | None = None,
    ):
        """Describes the dataset; `download_and_prepare()` then reads and encodes everything.

        Args:
            path: the `.csv`, `.tsv` or `.jsonl` caption file.
            data_dir: tfds data root (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
            image_root: folder that relative image paths start from (default: `path`'s folder).
            max_image_size: longest image side kept; None stores the original size.
            on_bad_image: 'error' raises `BadImageError`; 'skip' drops and counts the image.
            val_fraction: share of images hashed into 'validation' when there is no split column.
            test_fraction: share hashed into 'test' when there is no split column.
            image_key: image column/key name (default: first of `IMAGE_KEYS` present).
            caption_key: caption column/key (default: `CAPTION_KEYS`, or `CAPTION_LIST_KEYS`
                holding a list in JSONL).
            split_key: split column/key (default: `SPLIT_KEYS` if present, else hash splits).
            num_workers: image-encoding threads (default: CPU count, at most 8).

        Raises:
            FileNotFoundError: `path` does not exist.
            ValueError: unsupported suffix or bad option.
        """
        source = pathlib.Path(path).expanduser().resolve()
        if not source.is_file():
            raise FileNotFoundError(f"caption file not found: {source}")
        if source.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
            raise ValueError(f"{source}: expected a .csv, .tsv or .jsonl caption file")
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"bad split fractions: val {val_fraction}, test {test_fraction}")
        root = pathlib.Path(image_root).expanduser().resolve() if image_root else source.parent
        self._path, self._image_root = source, root
        self._keys = (image_key, caption_key, split_key)
        self._fractions = (val_fraction, test_fraction)
        init_kwargs = dict(
            path=path,
            data_dir=data_dir,
            image_root=image_root,
            max_image_size=max_image_size,
            on_bad_image=on_bad_image,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            image_key=image_key,
            caption_key=caption_key,
            split_key=split_key,
            num_workers=num_workers,
        )
        options = dict(image_root=root, keys=self._keys, fractions=self._fractions)
        self._setup(
            sources=[source],
            options=options,
            init_kwargs=init_kwargs,
            max_image_size=max_image_size,
            on_bad_image=on_bad_image,
            num_workers=num_workers,
            data_dir=data_dir,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only.
        reader = _read_jsonl if self._path.suffix.lower() == ".jsonl" else _read_delimited
        grouper = reader(self._path, self._keys)
        records = [r for r in grouper.records.values() if r.captions]
        num_excluded = len(grouper.excluded_images) + len(grouper.records) - len(records)
        expected = {r.split for r in records}
        if None in expected:
            val, test = self._fractions
            expected |= (
                {"train"} | ({"validation"} if val else set()) | ({"test"} if test else set())
            )
        for record in records:
            if record.split is None:
                record.split = hash_split(record.image, *self._fractions)
        self._record_exclusions(num_excluded, grouper.num_empty_captions)
        by_split = self._split_dict(records, str(self._path), sorted(expected - {None}))
        return {s: self._generate_examples(rs, self._image_root) for s, rs in by_split.items()}


# COCO's own layout of a download: annotations/captions_{train,val}YEAR.json, {train,val}YEAR/.
COCO_YEARS = ("2017", "2014")
COCO_SPLIT_NAMES = {"train": "train", "validation": "val"}


def coco_layout(root: str | os.PathLike) -> tuple[dict[str, pathlib.Path], dict[str, pathlib.Path]]:
    """`({split: caption JSON}, {split: image folder})` of a COCO folder as downloaded.

    `root/annotations/captions_train2017.json` with `root/train2017/` is the 'train' split and,
    when present, `captions_val2017.json` with `val2017/` the 'validation' split (COCO 2014's
    names work too). The image folders are checked by `CocoCaptions`.

    Raises:
        FileNotFoundError: `root` is not a folder or holds no train caption file.
    """
    folder = pathlib.Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"COCO folder not found: {folder}")
    year = next(
        (y for y in COCO_YEARS if (folder / "annotations" / f"captions_train{y}.json").is_file()),
        None,
    )
    if year is None:
        raise FileNotFoundError(
            f"COCO folder {folder}: annotations/captions_train2017.json not found (expected "
            "COCO's layout: annotations/captions_train2017.json, captions_val2017.json, "
            "train2017/, val2017/)"
        )
    files, roots = {}, {}
    for split, name in COCO_SPLIT_NAMES.items():
        file = folder / "annotations" / f"captions_{name}{year}.json"
        if file.is_file():
            files[split], roots[split] = file, folder / f"{name}{year}"
    return files, roots


class CocoCaptions(UserDataBuilder, skip_registration=True):
    """Images and captions in COCO caption JSON files (`captions_<split>2017.json`)."""

    def __init__(
        self,
        annotations: str | os.PathLike | Mapping[str, str | os.PathLike],
        image_root: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        max_image_size: int | None = 512,
        on_bad_image: str = "error",
        val_fraction: float = 0.0,
        num_workers: int | None = None,
    ):
        """Describes the dataset; `download_and_prepare()` then reads and encodes everything.

        Args:
            annotations: COCO's folder as downloaded (see `coco_layout`: train and, when
                present, val captions and images); or `{split: json_path}` (splits 'train',
                'validation'/'val', 'test'); or a single JSON path, the 'train' split.
            image_root: `{split: folder}` with the split's images, or one folder for all;
                required with JSON files, not given with a COCO folder.
            data_dir: tfds data root (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
            max_image_size: longest image side kept; None stores the original size.
            on_bad_image: 'error' raises `BadImageError`; 'skip' drops and counts the image.
            val_fraction: share of the train file's images hashed into 'validation' (by their
                `file_name`, as caption files are) when no validation file is given; with one,
                the file is the validation split and this is not used.
            num_workers: image-encoding threads (default: CPU count, at most 8).

        Raises:
            FileNotFoundError: an annotation file or image folder does not exist.
            ValueError: unknown split name, no image folder for a split, or a bad option.
        """
        init_kwargs = dict(
            annotations=annotations,
            image_root=image_root,
            data_dir=data_dir,
            max_image_size=max_image_size,
            on_bad_image=on_bad_image,
            val_fraction=val_fraction,
            num_workers=num_workers,
        )
        if not isinstance(annotations, Mapping) and pathlib.Path(annotations).expanduser().is_dir():
            if image_root is not None:
                raise ValueError(
                    f"image_root={str(image_root)!r} given with the COCO folder {annotations}, "
                    "whose images are read from its train2017/ and val2017/: leave it unset"
                )
            annotations, image_root = coco_layout(annotations)
        elif image_root is None:
            raise ValueError(
                f"image_root: the folder of the images of {annotations} is needed (or give "
                "COCO's folder, holding annotations/ and train2017/, instead of its JSON)"
            )
        if not isinstance(annotations, Mapping):
            annotations = {"train": annotations}
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        files, roots = {}, {}
        for name, file in annotations.items():
            split = _canonical_split(name, "annotations")
            if split is None:
                raise ValueError(f"annotations: bad split name {name!r}")
            files[split] = pathlib.Path(file).expanduser().resolve()
            if not files[split].is_file():
                raise FileNotFoundError(f"COCO annotation file not found: {files[split]}")
            if isinstance(image_root, Mapping):
                given = {_canonical_split(k, "image_root"): v for k, v in image_root.items()}
                if split not in given:
                    raise ValueError(f"image_root has no folder for split {split!r}")
                root = given[split]
            else:
                root = image_root
            roots[split] = pathlib.Path(root).expanduser().resolve()
            if not roots[split].is_dir():
                raise FileNotFoundError(
                    f"image folder for split {split!r} not found: {roots[split]}"
                )
        # Hashing into validation only happens without a validation file; otherwise the
        # fraction changes nothing and must not change the dataset's folder either.
        self._val_fraction = 0.0 if "validation" in files else val_fraction
        if self._val_fraction and "train" not in files:
            raise ValueError("val_fraction splits the train file, but no train file is given")
        self._files, self._roots = files, roots
        self._setup(
            sources=[files[s] for s in sorted(files)],
            options={
                "splits": sorted(files),
                "roots": {s: roots[s] for s in sorted(roots)},
                "val_fraction": self._val_fraction,
            },
            init_kwargs=init_kwargs,
            max_image_size=max_image_size,
            on_bad_image=on_bad_image,
            num_workers=num_workers,
            data_dir=data_dir,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only.
        generators, empty = {}, 0
        for split, file in self._files.items():
            records = _read_coco(file, split)
            with_captions = [r for r in records if r.captions]
            empty += len(records) - len(with_captions)
            if not with_captions:
                raise ValueError(f"{file}: no image has a caption")
            if split == "train" and self._val_fraction:
                for record in with_captions:
                    record.split = hash_split(record.image, self._val_fraction, 0.0)
            by_split = self._split_dict(with_captions, str(file), [split])
            for target, split_records in by_split.items():
                # Images hashed into validation still live in the train file's folder.
                generators[target] = self._generate_examples(split_records, self._roots[split])
        self._record_exclusions(empty, 0)
        return generators
