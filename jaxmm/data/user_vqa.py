"""A tfds builder that turns a user's visual-question-answering file into a dataset: `VqaFile`.

The file is JSON Lines, one question a line, image paths relative to the file's folder:

    {"image": "kitchen/01.jpg", "question": "What colour is the kettle?",
     "answers": ["red", "red", "dark red"], "question_type": "what color", "split": "train"}

`question_type` and `split` are optional. Lines of one image are grouped into one example,
questions in file order, in the schema of jaxmm's built-in VQA dataset:

    image           tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg')
    image_id        tfds.features.Text(), the image path as written in the file
    questions       tfds.features.Sequence(tfds.features.Text())
    answers         tfds.features.Sequence(tfds.features.Text()): per question, its human
                    answers joined by "\\n" (`jaxmm.evaluate.vqa.split_answers` undoes it)
    question_types  tfds.features.Sequence(tfds.features.Text()): the file's, or ""
    heldout         tfds.features.Sequence(bool): all False (a user file has no held-out set)

Usage (the training pipeline does this):

    builder = VqaFile("/data/kitchen/questions.jsonl", data_dir="/data/tfds")
    builder.download_and_prepare()
    source = builder.as_data_source("train")   # dicts of numpy; text comes back as bytes

Everything else follows the caption-file builder (`user_captions.ImageCaptionFile`), with the
same options and rules:
- Splits: a line's `split` (`train`; `validation`|`val`|`valid`|`dev`; `test`; null, "" or
  "none" excludes the image, counted in `info.metadata`); all lines of an image must agree.
  Lines without one are hashed into train/validation/test by their image path with
  `val_fraction`/`test_fraction` (a SHA-256, so the same on every run and machine).
- Images: validated, oriented, converted to RGB and shrunk to `max_image_size` as for
  captions; a JPEG that needs none of that is kept byte for byte. Missing or undecodable
  images raise `BadImageError` naming the image and the line (`on_bad_image='error'`), or are
  skipped, counted and logged (`on_bad_image='skip'`).
- Errors: an empty file, a line that is not a JSON object, lacks `image`, `question` or
  `answers`, or whose `answers` is not a non-empty list of non-empty strings raises one
  `ValueError` naming the file and line. A question's length is not checked here: what fits a
  model's context is the task's business.
- Where the data goes: `<data_dir>/vqa_file/<stem>_<hash>/1.0.0`, the hash covering the
  file's path, size and mtime and every option, so editing the file builds a fresh copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jaxmm.data.user_captions import (
    Record,
    UserDataBuilder,
    _canonical_split,
    _check_encodable,
    _read_utf8,
    hash_split,
    text_name,
)

REQUIRED_KEYS = ("image", "question", "answers")
EXAMPLE_LINE = '{"image": "a.jpg", "question": "What is it?", "answers": ["a cat", "cat"]}'
# Marks an image whose split is null/""/"none": kept while reading, so its other lines are
# checked for the same split, then left out.
_EXCLUDED = "excluded"


def vqa_features() -> tfds.features.FeaturesDict:
    """The example schema shared with jaxmm's built-in VQA dataset (see the module docstring)."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "image_id": tfds.features.Text(),
            "questions": tfds.features.Sequence(tfds.features.Text()),
            "answers": tfds.features.Sequence(tfds.features.Text()),
            "question_types": tfds.features.Sequence(tfds.features.Text()),
            "heldout": tfds.features.Sequence(tfds.features.Scalar(dtype=np.bool_)),
        }
    )


@dataclasses.dataclass
class VqaRecord(Record):
    """One image and its questions, as read from the file (`captions` stays empty)."""

    questions: list[str] = dataclasses.field(default_factory=list)
    answers: list[str] = dataclasses.field(default_factory=list)  # one "\n"-joined per question
    question_types: list[str] = dataclasses.field(default_factory=list)


def _string(obj: dict, key: str, where: str, *, optional: bool = False) -> str:
    """`obj[key]` as a checked, non-empty string ("" for an absent or null optional key)."""
    value = obj.get(key)
    if optional and value is None:
        return ""
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise ValueError(f"{where}: {key!r} must be a non-empty string, got {value!r:.60}")
    _check_encodable(value, where)
    return value


def _answers(obj: dict, where: str) -> str:
    """The line's human answers, checked and joined by "\\n" as the dataset stores them."""
    answers = obj["answers"]
    if not isinstance(answers, list) or not answers:
        raise ValueError(
            f"{where}: 'answers' must be a non-empty list of strings, got {answers!r:.60}"
        )
    for i, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(
                f"{where}: answers[{i}] must be a non-empty string, got {answer!r:.60}"
            )
        if "\n" in answer or "\r" in answer:
            # The stored field joins answers with "\n": one inside would split the answer.
            raise ValueError(f"{where}: answers[{i}] {answer!r:.60} holds a line break")
        _check_encodable(answer, where)
    return "\n".join(answers)


def read_vqa_jsonl(path: pathlib.Path) -> tuple[list[VqaRecord], int]:
    """The file's images with their questions, and the number of images excluded by split.

    Records keep file order (an image first seen earlier comes first); `split` is None where
    the lines carry no split, to be hashed.

    Raises:
        ValueError: an empty file, or a bad line (named `path:line`).
    """
    records: dict[str, VqaRecord] = {}
    seen_line = False
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends.
    for lineno, line in enumerate(_read_utf8(path).split("\n"), start=1):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        seen_line = True
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in obj]
        if missing:
            raise ValueError(
                f"{where}: missing {', '.join(map(repr, missing))}; each line needs "
                f"{', '.join(map(repr, REQUIRED_KEYS))}, got {sorted(obj)}"
            )
        image = _string(obj, "image", where).strip()
        question = _string(obj, "question", where)
        answers = _answers(obj, where)
        question_type = _string(obj, "question_type", where, optional=True)
        split = None
        if "split" in obj:
            split = _canonical_split(obj["split"], where) or _EXCLUDED
        if image not in records:
            records[image] = VqaRecord(image, [], split, where)
        record = records[image]
        if record.split != split:
            raise ValueError(
                f"{where}: image {image} is in split {split}, but in {record.split} at "
                f"{record.where}"
            )
        record.questions.append(question)
        record.answers.append(answers)
        record.question_types.append(question_type)
    if not seen_line:
        raise ValueError(
            f"{path}: empty; expected one JSON object per line, such as {EXAMPLE_LINE}"
        )
    kept = [r for r in records.values() if r.split != _EXCLUDED]
    return kept, len(records) - len(kept)


class VqaFile(UserDataBuilder, skip_registration=True):
    """Images with questions and human answers listed in a user's JSONL file."""

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
        num_workers: int | None = None,
    ):
        """Describes the dataset; `download_and_prepare()` then reads and encodes everything.

        Args:
            path: the `.jsonl` question file.
            data_dir: tfds data root (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
            image_root: folder that relative image paths start from (default: `path`'s folder).
            max_image_size: longest image side kept; None stores the original size.
            on_bad_image: 'error' raises `BadImageError`; 'skip' drops and counts the image.
            val_fraction: share of images hashed into 'validation' for lines without a split.
            test_fraction: share hashed into 'test' for lines without a split.
            num_workers: image-encoding threads (default: CPU count, at most 8).

        Raises:
            FileNotFoundError: `path` does not exist.
            ValueError: not a `.jsonl` file, or a bad option.
        """
        source = pathlib.Path(path).expanduser().resolve()
        if not source.is_file():
            raise FileNotFoundError(f"VQA question file not found: {source}")
        if source.suffix.lower() != ".jsonl":
            raise ValueError(f"{source}: expected a .jsonl file, one question a line")
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"bad split fractions: val {val_fraction}, test {test_fraction}")
        root = pathlib.Path(image_root).expanduser().resolve() if image_root else source.parent
        self._path, self._image_root = source, root
        self._fractions = (val_fraction, test_fraction)
        init_kwargs = dict(
            path=path,
            data_dir=data_dir,
            image_root=image_root,
            max_image_size=max_image_size,
            on_bad_image=on_bad_image,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            num_workers=num_workers,
        )
        self._setup(
            sources=[source],
            options=dict(image_root=root, fractions=self._fractions),
            init_kwargs=init_kwargs,
            max_image_size=max_image_size,
            on_bad_image=on_bad_image,
            num_workers=num_workers,
            data_dir=data_dir,
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=vqa_features(),
            metadata=tfds.core.MetadataDict(),
        )

    def _example(self, record: VqaRecord, image: bytes) -> dict:
        return {
            "image": image,
            "image_id": text_name(record.image),
            "questions": record.questions,
            "answers": record.answers,
            "question_types": record.question_types,
            "heldout": [False] * len(record.questions),
        }

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only.
        records, num_excluded = read_vqa_jsonl(self._path)
        expected = {r.split for r in records}
        if None in expected:
            val, test = self._fractions
            expected |= (
                {"train"} | ({"validation"} if val else set()) | ({"test"} if test else set())
            )
        for record in records:
            if record.split is None:
                record.split = hash_split(record.image, *self._fractions)
        self._record_exclusions(num_excluded, 0)
        by_split = self._split_dict(records, str(self._path), sorted(expected - {None}))
        return {s: self._generate_examples(rs, self._image_root) for s, rs in by_split.items()}
