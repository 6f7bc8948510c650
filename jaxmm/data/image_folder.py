"""A tfds builder for a user's images sorted into one folder per class: `ImageFolder(root)`.

Two layouts, detected from the folder names:

    root/<class>/<image>              every image hashed into train/validation(/test)
    root/<split>/<class>/<image>      split folders train, val|validation|valid|dev, test

Example schema (what `pipeline.image_label_example` and the classification evaluation read):

    image     tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')
    label     tfds.features.ClassLabel(names=<class folder names, sorted>)
    image_id  tfds.features.Text(), the image path relative to `root`

Usage (the trainer does this for `data.name='image_folder'`):

    builder = ImageFolder("/data/flowers", data_dir="/data/tfds")
    builder.download_and_prepare()
    source = builder.as_data_source("train")

Images are validated, oriented, converted and shrunk exactly as for caption files (see
`user_captions`), and bad ones follow the same `on_bad_image` rule. Files whose suffix is not
an image format (README, .DS_Store, ...) and hidden entries are ignored and counted in
`info.metadata`. Class names are the folder names, sorted, so label indices are the same on
every machine; in the split layout the classes are the union over splits, so a class missing
from one split keeps its index. The prepared copy's folder name hashes the list of image
files with their sizes and modification times: adding, removing or editing an image builds a
fresh copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import tensorflow_datasets as tfds
from absl import logging

from jaxmm.data.user_captions import (
    SPLIT_ALIASES,
    Record,
    UserDataBuilder,
    hash_split,
    text_name,
)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


def _visible_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: pathlib.Path) -> tuple[list[pathlib.Path], int]:
    """Image files anywhere below `folder` (sorted) and the count of other files ignored."""
    images, ignored = [], 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.parts[-2:]):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            ignored += 1
    return images, ignored


class ImageFolder(UserDataBuilder, skip_registration=True):
    """Images in one sub-folder per class (optionally inside split folders)."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        data_dir: str | os.PathLike | None = None,
        max_image_size: int | None = 512,
        on_bad_image: str = "error",
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        num_workers: int | None = None,
    ):
        """Scans `root`; `download_and_prepare()` then encodes every image.

        Args:
            root: the folder holding class folders (or split folders of class folders).
            data_dir: tfds data root (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
            max_image_size: longest image side kept; None stores the original size.
            on_bad_image: 'error' raises `BadImageError`; 'skip' drops and counts the image.
            val_fraction: share of images hashed into 'validation' (layout without splits).
            test_fraction: share hashed into 'test' (layout without splits).
            num_workers: image-encoding threads (default: CPU count, at most 8).

        Raises:
            FileNotFoundError: `root` is not a folder.
            ValueError: no class folders or no images, or bad split fractions.
        """
        folder = pathlib.Path(root).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"bad split fractions: val {val_fraction}, test {test_fraction}")
        self._root, self._fractions = folder, (val_fraction, test_fraction)
        self._records, self._classes, self._ignored = self._scan(folder)
        self._split_layout = self._records[0].split is not None
        listing = [
            (r.image, (folder / r.image).stat().st_size, (folder / r.image).stat().st_mtime_ns)
            for r in self._records
        ]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
        self._setup(
            sources=[folder],
            options=dict(listing=digest, fractions=self._fractions),
            init_kwargs=dict(
                root=root,
                data_dir=data_dir,
                max_image_size=max_image_size,
                on_bad_image=on_bad_image,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                num_workers=num_workers,
            ),
            max_image_size=max_image_size,
            on_bad_image=on_bad_image,
            num_workers=num_workers,
            data_dir=data_dir,
            stem=folder.name,
        )

    def _scan(self, folder: pathlib.Path) -> tuple[list[Record], list[str], int]:
        """Records (split None when hashed), sorted class names, and ignored-file count."""
        top = _visible_dirs(folder)
        split_layout = bool(top) and all(d.name.lower() in SPLIT_ALIASES for d in top)
        # (split, class folder) pairs; split None means "assign by hash".
        class_dirs = (
            [(SPLIT_ALIASES[d.name.lower()], c) for d in top for c in _visible_dirs(d)]
            if split_layout
            else [(None, c) for c in top]
        )
        classes = sorted({c.name for _, c in class_dirs})
        if not classes:
            layout = "split folders hold no" if split_layout else "no"
            raise ValueError(f"{folder}: {layout} class folders (expected root/<class>/<image>)")
        records, ignored = [], 0
        for split, class_dir in class_dirs:
            images, skipped = _images_under(class_dir)
            ignored += skipped
            if not images:
                logging.warning("%s: no images", class_dir)
            label = classes.index(class_dir.name)
            for image in images:
                name = str(image.relative_to(folder))
                records.append(Record(name, [], split, name, label))
        if not records:
            raise ValueError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return records, classes, ignored

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=self._classes),
                    "image_id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _example(self, record: Record, image: bytes) -> dict:
        return {"image": image, "label": record.label, "image_id": text_name(record.image)}

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only.
        if not self._split_layout:
            for record in self._records:
                record.split = hash_split(record.image, *self._fractions)
        self._record_exclusions(0, 0)
        self.info.metadata["num_ignored_files"] = self._ignored
        if self._ignored:
            logging.warning("%s: ignored %d non-image files", self._root, self._ignored)
        val, test = self._fractions
        expected = (
            {r.split for r in self._records}
            if self._split_layout
            else {"train"} | ({"validation"} if val else set()) | ({"test"} if test else set())
        )
        by_split = self._split_dict(self._records, str(self._root), sorted(expected))
        return {s: self._generate_examples(rs, self._root) for s, rs in by_split.items()}
