"""Fuzz tests (hypothesis): the tokenizers and the user-data readers on arbitrary input.

Each property either holds on every generated input or hypothesis shrinks the failure to a
minimal example. Example counts are small so the module stays within seconds; runs of 500-1500
examples pass too, and one of them found the crash on a JSON lone-surrogate escape that
test_bad_input now pins.
"""

import io
import json
import pathlib
import unittest.mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from jaxmm.data import user_captions as uc
from jaxmm.data.tokenizer import Tokenizer, load_clip_tokenizer, train_bpe_tokenizer

FUZZ = settings(
    max_examples=60,
    deadline=None,  # the first call of each property pays for warm-up
    # The file-writing properties reuse one tmp_path: every example overwrites its files.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def clip_tokenizer(shared_data) -> Tokenizer:
    return load_clip_tokenizer(shared_data / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(scope="module")
def small_tokenizer() -> Tokenizer:
    return train_bpe_tokenizer(["a red circle", "two blue squares", "ein grünes Dreieck"], 600)


def _check_tokens(tokenizer: Tokenizer, texts: list[str], context_length: int) -> None:
    tokens = tokenizer(texts, context_length=context_length)
    assert tokens.shape == (len(texts), context_length) and tokens.dtype == np.int32
    assert (tokens >= 0).all() and (tokens < tokenizer.vocab_size).all()
    for row in tokens:
        assert row[0] == tokenizer.sot_id
        # Exactly one EOT, the last non-zero id, then zero padding. (A text holding the literal
        # string "<|endoftext|>" would add a second EOT, as in OpenAI's tokenizer; random text
        # does not spell it.)
        (eot,) = np.flatnonzero(row == tokenizer.eot_id)
        assert (row[eot + 1 :] == 0).all()


# Unicode text of every category hypothesis knows (no lone surrogates: they cannot come out
# of a UTF-8 caption), plus the kinds of text captions hold.
TEXTS = st.lists(
    st.text(max_size=120) | st.sampled_from(["", " ", "\n\t", "&amp;lt;", "A\u0301\u200b\ufeff"]),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(texts=TEXTS, context_length=st.integers(2, 40))
def test_clip_tokenizer_on_arbitrary_unicode(clip_tokenizer, texts, context_length):
    _check_tokens(clip_tokenizer, texts, context_length)


@FUZZ
@given(texts=TEXTS, context_length=st.integers(2, 40))
def test_trained_bpe_on_arbitrary_unicode(small_tokenizer, texts, context_length):
    _check_tokens(small_tokenizer, texts, context_length)


# Caption files made of the pieces that matter to the parsers (headers, separators, quotes,
# JSON punctuation, line breaks, BOM, NUL), random text, and raw bytes that are not UTF-8.
PIECES = st.sampled_from(
    [
        "image",
        "caption",
        "captions",
        "split",
        "a.jpg",
        "train",
        "val",
        "none",
        ",",
        "\t",
        "\n",
        "\r\n",
        "\r",
        '"',
        " ",
        "{",
        "}",
        "[",
        "]",
        ":",
        '"image"',
        '"caption"',
        '"captions"',
        '"split"',
        '"\\ud800"',  # JSON escapes for lone surrogates, which UTF-8 cannot encode
        '"\\udce9.jpg"',
        "null",
        "1",
        "\x00",
        "\ufeff",
        "é",
        "\u2028",
    ]
)
# Well-formed lines with odd values, so the parsers' later checks are reached too.
KEYS = st.sampled_from(["image", "Image", "caption", "captions", "text", "split", "extra"])
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(["a.jpg", "train", "val", "none", "\ud800", "x\udce9.jpg"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)
NAMES = st.sampled_from(["a.jpg", "\ud800", "x\udce9.jpg"]) | st.text(max_size=8)
# Mostly well-formed objects (a caption file stops at its first bad line).
OBJECTS = st.fixed_dictionaries(
    {"image": NAMES | VALUES, "caption": NAMES | VALUES},
    optional={"captions": st.lists(NAMES, max_size=3) | VALUES, "split": VALUES, "x": VALUES},
)
JSON_LINES = st.lists(OBJECTS | st.dictionaries(KEYS, VALUES, max_size=4) | VALUES, max_size=3).map(
    lambda objects: "\n".join(json.dumps(o) for o in objects).encode()
)
CELLS = st.sampled_from(["a.jpg", "b.png", "train", "val", "", " ", '"', "x,y", "\t"])


def _delimited(separator: str) -> st.SearchStrategy[bytes]:
    """A header of known columns, then rows of odd cells (any count of them)."""
    rows = st.lists(st.lists(CELLS | st.text(max_size=6), min_size=1, max_size=4), max_size=5)
    return rows.map(
        lambda rows: "\n".join(
            separator.join(["image", "caption", "split"][: len(row)] if i == 0 else row)
            for i, row in enumerate(rows)
        ).encode()
    )


RAW = st.one_of(
    st.lists(PIECES | st.text(max_size=6), max_size=50).map(lambda p: "".join(p).encode()),
    st.binary(max_size=200),
)
# (content, file suffix): raw content under any suffix, structured content under its own.
CAPTION_FILES = st.one_of(
    st.tuples(RAW, st.sampled_from([".csv", ".tsv", ".jsonl"])),
    st.tuples(JSON_LINES, st.just(".jsonl")),
    st.tuples(_delimited(","), st.just(".csv")),
    st.tuples(_delimited("\t"), st.just(".tsv")),
)


@FUZZ
@given(file=CAPTION_FILES)
def test_caption_file_parser_on_arbitrary_bytes(tmp_path, file):
    """A caption file is read into records, or refused with a ValueError naming the file; an
    image it lists is then loaded or named, with its line, in a BadImageError."""
    content, suffix = file
    path = tmp_path / f"captions{suffix}"
    path.write_bytes(content)
    builder = uc.ImageCaptionFile(path, data_dir=tmp_path / "tfds", num_workers=1)
    try:
        generators = builder._split_generators(dl_manager=None)
    except ValueError as e:
        assert str(e).startswith(str(path)), e
        return
    for generator in generators.values():
        # No images exist beside the fuzzed file: the first one is named with its line.
        with pytest.raises(uc.BadImageError, match=rf"^{path}:\d+: image "):
            next(generator)


def _encoded(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format=fmt)
    return out.getvalue()


VALID_IMAGES = [
    _encoded(fmt, mode)
    for fmt, mode in [("PNG", "RGB"), ("PNG", "LA"), ("JPEG", "RGB"), ("JPEG", "CMYK")]
    + [("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGBA"), ("WEBP", "RGB")]
]


@st.composite
def damaged_images(draw) -> bytes:
    """A valid small image with some bytes overwritten and possibly its tail cut off."""
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@FUZZ
@given(content=st.binary(max_size=300) | damaged_images())
def test_image_decoding_on_arbitrary_bytes(tmp_path, content):
    """An image file becomes an RGB JPEG, or a BadImageError naming it and its caption line."""
    (tmp_path / "x.img").write_bytes(content)
    csv = tmp_path / "c.csv"
    csv.write_text("image,caption\nx.img,fuzz\n")
    builder = uc.ImageCaptionFile(csv, data_dir=tmp_path / "tfds", num_workers=1)
    record = uc.Record("x.img", ["fuzz"], "train", f"{csv}:2")
    # A damaged header can claim a huge size: keep Pillow's bomb limit at a megapixel so
    # that such a file fails fast instead of allocating gigabytes.
    with unittest.mock.patch.object(Image, "MAX_IMAGE_PIXELS", 2**20):
        try:
            ((key, example),) = builder._generate_examples([record], pathlib.Path(tmp_path))
        except uc.BadImageError as e:
            assert str(e).startswith(f"{csv}:2: image {tmp_path / 'x.img'}: "), e
            return
    assert key == "x.img"
    with Image.open(io.BytesIO(example["image"])) as stored:
        assert stored.format == "JPEG" and stored.mode == "RGB"
