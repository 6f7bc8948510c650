"""CLIP text tokenizer on Hugging Face `tokenizers`: OpenAI's BPE, and a small trainable one.

`load_clip_tokenizer` rebuilds OpenAI CLIP's byte-level BPE (openai/CLIP
`clip/simple_tokenizer.py`, also open_clip's `SimpleTokenizer`) from
`bpe_simple_vocab_16e6.txt.gz` and gives exactly its ids: vocab 49,408, SOT 49406, EOT 49407.
A copy of that file ships inside jaxmm (`jaxmm/data/assets/`, MIT licence beside it), so
`load_clip_tokenizer()` needs no download.
`train_bpe_tokenizer` trains a small byte-level BPE of the same shape on a caption corpus.
Both return a `Tokenizer`, whose call gives the `[N, context_length]` int32 array the text
tower eats: SOT, ids, EOT, zero padding.

Text cleaning (ftfy, double HTML unescape, whitespace collapse, lower-casing) and OpenAI's
pre-tokenisation regex run in Python because they have to match OpenAI's Python semantics
character for character (the `regex` module is also ~8x faster here than the `tokenizers`
Split); byte mapping and BPE run in Rust. ~25 us a caption batched, ~40 us one at a time.
The saved file is a plain `tokenizers` JSON (SOT/EOT registered as special tokens), so the
same file also loads with `tokenizers.Tokenizer.from_file` -- but without this module's
cleaning, which the JSON cannot express exactly.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import json
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import ftfy
import numpy as np
import regex
import tokenizers
from tokenizers import AddedToken, Regex, models, pre_tokenizers, trainers

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
PAD = "<pad>"  # id 0 of trained tokenizers; OpenAI's vocab has "!" there and pads with 0 anyway.
END_OF_WORD = "</w>"
# lines[1 : 49152 - 256 - 2 + 1] of the merges file, as in OpenAI's SimpleTokenizer.
NUM_CLIP_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 2 * 256 + NUM_CLIP_MERGES + 2
# OpenAI's merges file, shipped as package data under jaxmm/data/assets/ (as open_clip does).
PACKAGED_MERGES = "bpe_simple_vocab_16e6.txt.gz"

# OpenAI's pre-tokenisation pattern (case-insensitive). `(?i)` matters even after
# lower-casing: case folding lets `'s` match e.g. "'ſ" (long s), which lower() leaves alone.
_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
_SPLIT_RE = regex.compile(_PATTERN, regex.IGNORECASE)
_WHITESPACE_RE = re.compile(r"\s+")
# Text ftfy provably leaves alone up to line breaks, which the whitespace collapse erases anyway:
# printable ASCII, tab, LF, FF, CR, and no "&" (HTML entities). Other ASCII control characters
# are removed by ftfy. Skipping ftfy here saves ~15 us of the ~40 us a caption costs.
_FTFY_NOOP_RE = re.compile(r"[\t\n\x0c\r\x20-\x25\x27-\x7e]*")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI/GPT-2 map from each byte to a printable unicode character (256 entries).

    Printable Latin-1 bytes map to themselves; the rest are shifted to 256+ so that BPE
    never sees whitespace or control characters.
    """
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clean_text(text: str) -> str:
    """OpenAI's `whitespace_clean(basic_clean(text)).lower()`.

    Raises:
        TypeError: `text` is not a `str`.
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenizer input must be str, got {type(text).__name__}: {text!r:.80}")
    if _FTFY_NOOP_RE.fullmatch(text) is None:
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    text = text.strip()
    return _WHITESPACE_RE.sub(" ", text).strip().lower()


def _build_hf_tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]]
) -> tokenizers.Tokenizer:
    """A `tokenizers` BPE with OpenAI's pre-tokeniser and `</w>` end-of-word suffix."""
    hf = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD)
    )
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # invert=True keeps the regex matches and drops the rest (whitespace), like findall.
            pre_tokenizers.Split(Regex("(?i)" + _PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT, EOT)])
    return hf


class Tokenizer:
    """Cleans text and runs a `tokenizers` BPE; calling it gives padded CLIP token arrays.

    Attributes:
        vocab_size: number of ids; SOT and EOT are the two largest (the text tower pools at
            argmax(id), so EOT must be the largest).
        sot_id: start-of-text id.
        eot_id: end-of-text id.
        pad_id: padding id (0).
    """

    pad_id: int = 0

    def __init__(self, hf_tokenizer: tokenizers.Tokenizer):
        """Wraps a `tokenizers.Tokenizer` built by this module (or loaded from its JSON).

        Raises:
            ValueError: the tokenizer lacks `<|startoftext|>`/`<|endoftext|>`, or EOT is not
                the largest id.
        """
        self._hf = hf_tokenizer
        # Same model with a byte-level-only pre-tokenizer: the regex split runs in Python.
        self._fast = tokenizers.Tokenizer.from_str(hf_tokenizer.to_str())
        self._fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        sot_id, eot_id = hf_tokenizer.token_to_id(SOT), hf_tokenizer.token_to_id(EOT)
        if sot_id is None or eot_id is None:
            raise ValueError(f"tokenizer has no {SOT} / {EOT} tokens")
        if eot_id != self.vocab_size - 1:
            # The text tower pools at argmax(id) (OpenAI CLIP), which must find EOT.
            raise ValueError(f"{EOT} must be the largest id {self.vocab_size - 1}, got {eot_id}")
        self.sot_id, self.eot_id = int(sot_id), int(eot_id)
        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, sot_id={self.sot_id}, eot_id={self.eot_id})"
        )

    def _encode_cleaned(self, texts: list[str]) -> list[list[int]]:
        # OpenAI's regex runs here, in the same `regex` module OpenAI uses (5 us a caption, where
        # the `tokenizers` Split costs ~40 us); `tokenizers` then does byte mapping and BPE.
        # A piece that is exactly SOT/EOT comes out as that special id, as in OpenAI's code.
        words = [_SPLIT_RE.findall(t) for t in texts]
        if len(words) == 1:
            # A single string skips encode_batch's thread-pool overhead.
            return [self._fast.encode(words[0], is_pretokenized=True, add_special_tokens=False).ids]
        encodings = self._fast.encode_batch_fast(
            words, is_pretokenized=True, add_special_tokens=False
        )
        return [e.ids for e in encodings]

    def encode(self, text: str) -> list[int]:
        """BPE ids of one string, without SOT/EOT.

        Raises:
            TypeError: `text` is not a `str`.
        """
        return self._encode_cleaned([clean_text(text)])[0]

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
        """Tokenises to `[N, context_length]` int32: SOT, ids, EOT, then `pad_id`.

        Too-long texts are cut to `context_length` tokens with EOT kept last (open_clip's rule).
        A single string gives `N = 1`.

        Raises:
            TypeError: an input is not a `str`.
            ValueError: `context_length < 2`.
        """
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, bytes) or not isinstance(texts, Iterable):
            raise TypeError(f"tokenizer input must be str or a sequence of str, got {type(texts)}")
        all_ids = self._encode_cleaned([clean_text(t) for t in texts])
        tokens = np.full((len(all_ids), context_length), self.pad_id, dtype=np.int32)
        tokens[:, 0] = self.sot_id
        for row, ids in zip(tokens, all_ids, strict=True):
            n = min(len(ids), context_length - 2)
            row[1 : n + 1] = ids[:n]
            row[n + 1] = self.eot_id
        return tokens

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids, for debugging: drops SOT and stops at the first EOT (padding follows).

        Undoes byte-level BPE only; the cleaning (lower-casing, whitespace) is not reversible.
        """
        pieces = []
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                break
            if i != self.sot_id:
                pieces.append(self._hf.id_to_token(i) or "")
        raw = bytearray(self._byte_decoder[c] for c in "".join(pieces) if c in self._byte_decoder)
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def save(self, path: str | os.PathLike) -> None:
        """Writes one `tokenizers` JSON file (parents created)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._hf.save(str(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Reads a file written by `save`.

        Raises:
            FileNotFoundError: `path` does not exist.
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(tokenizers.Tokenizer.from_file(str(path)))


def packaged_merges() -> importlib.resources.abc.Traversable:
    """OpenAI's `bpe_simple_vocab_16e6.txt.gz`, shipped inside jaxmm (MIT, see its LICENSE)."""
    return importlib.resources.files("jaxmm.data").joinpath("assets", PACKAGED_MERGES)


def load_clip_tokenizer(merges_path: str | os.PathLike | None = None) -> Tokenizer:
    """OpenAI CLIP's tokenizer from `bpe_simple_vocab_16e6.txt.gz` (gzip or plain text).

    Vocab order follows OpenAI: 256 byte characters, the same with `</w>`, one token per merge,
    then SOT (49406) and EOT (49407).

    Args:
        merges_path: a merges file; None or "" (a config's "not set") takes the copy of
            OpenAI's file shipped with jaxmm, so no download is needed.

    Raises:
        FileNotFoundError: `merges_path` does not exist.
        ValueError: the file holds fewer merges than CLIP's 48,894.
    """
    if merges_path is None or str(merges_path) == "":
        path = packaged_merges()
        if not path.is_file():  # a broken install: the package data did not come along
            raise FileNotFoundError(f"jaxmm's packaged CLIP BPE merges file is missing: {path}")
    else:
        path = pathlib.Path(merges_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CLIP BPE merges file not found: {path}")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic; the name alone does not say.
        data = gzip.decompress(data)
    lines = data.decode("utf-8").split("\n")[1 : NUM_CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_CLIP_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {NUM_CLIP_MERGES} merge lines of two tokens each")
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + END_OF_WORD for c in byte_chars] + ["".join(m) for m in merges]
    vocab += [SOT, EOT]
    return Tokenizer(_build_hf_tokenizer({t: i for i, t in enumerate(vocab)}, merges))


def _merges_of(hf: tokenizers.Tokenizer) -> list[tuple[str, str]]:
    """Ordered merges of a trained BPE (the JSON holds `[a, b]` or, in older versions, "a b")."""
    raw = json.loads(hf.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in raw]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """Trains a byte-level BPE on captions, CLIP-style, with exactly `vocab_size` ids.

    Layout: `<pad>` = 0, the 256 byte characters, the same with `</w>` (so any text encodes
    without an unknown token), merge results in rank order, unused filler ids if the corpus
    runs out of merges, then SOT = `vocab_size - 2` and EOT = `vocab_size - 1`. Same corpus,
    same ids: every end-of-word character is pinned to a fixed id before training so that the
    trainer's tie-breaking (by pair id) does not depend on hash-map order.

    Raises:
        ValueError: `vocab_size` leaves no room for the 515 fixed tokens.
        TypeError: a text is not a `str`.
    """
    byte_chars = list(bytes_to_unicode().values())
    base = [PAD, *byte_chars, *(c + END_OF_WORD for c in byte_chars)]
    num_merges = vocab_size - len(base) - 2
    if num_merges < 0:
        raise ValueError(f"vocab_size must be >= {len(base) + 2}, got {vocab_size}")
    trainer = trainers.BpeTrainer(
        vocab_size=len(base) + num_merges,
        show_progress=False,
        special_tokens=[PAD, *(c + END_OF_WORD for c in byte_chars)],
        initial_alphabet=byte_chars,
        end_of_word_suffix=END_OF_WORD,
    )
    hf = _build_hf_tokenizer({}, [])
    hf.train_from_iterator((clean_text(t) for t in texts), trainer=trainer)
    merges = _merges_of(hf)[:num_merges]
    vocab = {t: i for i, t in enumerate(base)}
    for a, b in merges:
        # Two merges can spell the same token ("a"+"bc", "ab"+"c"); it keeps its first id.
        vocab.setdefault(a + b, len(vocab))
    for i in range(vocab_size - 2 - len(vocab)):
        vocab[f"<|unused{i}|>"] = len(vocab)  # No merge produces these: never emitted.
    vocab[SOT], vocab[EOT] = vocab_size - 2, vocab_size - 1
    return Tokenizer(_build_hf_tokenizer(vocab, merges))
