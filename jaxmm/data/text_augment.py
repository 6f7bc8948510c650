"""Caption augmentation: EDA's four word operations (Wei & Zou 2019).

"EDA: Easy Data Augmentation Techniques for Boosting Performance on Text Classification
Tasks", Section 2.1. With `n = alpha * l` changes for a sentence of `l` words:

* synonym replacement (SR): choose `n` words that are not stop words and replace each
  with one of its synonyms, chosen at random;
* random insertion (RI): take a random synonym of a random word that is not a stop word
  and insert it at a random position; `n` times;
* random swap (RS): swap the positions of two random words; `n` times;
* random deletion (RD): remove each word with probability `p` (here `p = alpha`, as in the
  paper's experiments, where one alpha drives all four).

Deviations, each for a reason: `n = max(1, round_half_up(alpha * l))` so that short captions
(most of `clip_shapes` has 3-8 words) still change; an operation that deletes every word
keeps one of them at random instead, so a caption is never empty; and instead of writing
several augmented copies of a corpus offline, each training draw of a caption applies each
operation with its own probability, in the paper's order SR, RI, RS, RD.

Everything random comes from the per-example `np.random.Generator` that the input pipeline
gives (see `jaxmm/data/pipeline.py`), so the same seed gives the same captions on any number
of processes.

Synonym sources (`synonyms` in the config section):

* `"shapes"`: the built-in table for the `clip_shapes` vocabulary, in
  `assets/clip_shapes_synonyms.json` (a sibling of this file);
* `"file"`: a user's table at `synonyms_path`, JSON (`{"word": ["synonym", ...]}`) or TSV
  (one line per word: the word, then its synonyms, tab-separated);
* `"wordnet"`: Princeton WordNet's database files (`index.noun`, `data.noun`, ... in the
  folder `synonyms_path`; empty: `/usr/share/wordnet`, which Debian's `wordnet-base`
  package installs). No PyPI package ships WordNet's data (nltk and `wn` download it at run
  time), so this source is optional. See `WordNetSynonyms`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

BUILTIN_TABLES = {"shapes": pathlib.Path(__file__).parent / "assets" / "clip_shapes_synonyms.json"}
SOURCES = ("shapes", "file", "wordnet")
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"

# Function words never replaced or used as an insertion source: swapping "a" for a synonym
# or inserting synonyms of "of" only adds noise (EDA skips nltk's English stop words; this
# is the part of that list that captions of pictures use).
STOP_WORDS = frozenset(
    "a an the this that these those there here it its is are was were be been being has have "
    "had do does did of in on at to from by with without for about above below over under "
    "against between into onto near and or but nor so than as whose which who whom what "
    "where when while i me my we our you your he him his she her they them their".split()
)
# Punctuation that sticks to a word in captions ("circle.", "shapes:"); it is not part of
# the word looked up in a synonym table.
_PUNCTUATION = ".,;:!?\"'()"


class Synonyms(Protocol):
    """Anything that maps a lower-case word to its synonyms (a dict, `WordNetSynonyms`)."""

    def get(self, word: str, default: Any = ..., /) -> Any: ...


def _key(word: str) -> str:
    return word.lower().strip(_PUNCTUATION)


def _synonyms_of(word: str, synonyms: Synonyms) -> tuple[str, ...]:
    return tuple(s for s in synonyms.get(_key(word), ()) if s != _key(word))


def num_changes(alpha: float, num_words: int) -> int:
    """EDA's `n = alpha * l`, rounded half up, at least 1."""
    return max(1, int(np.floor(alpha * num_words + 0.5)))


def _replaceable(words: list[str], synonyms: Synonyms) -> list[int]:
    """Positions of the words that are not stop words and have a synonym."""
    return [
        i for i, w in enumerate(words) if _key(w) not in STOP_WORDS and _synonyms_of(w, synonyms)
    ]


def synonym_replacement(
    words: list[str], n: int, synonyms: Synonyms, rng: np.random.Generator
) -> list[str]:
    """Replaces `min(n, candidates)` distinct non-stop words that have synonyms."""
    candidates = _replaceable(words, synonyms)
    if not candidates:
        return list(words)
    out = list(words)
    for i in rng.choice(candidates, size=min(n, len(candidates)), replace=False):
        options = _synonyms_of(words[i], synonyms)
        out[i] = options[rng.integers(len(options))]
    return " ".join(out).split()  # a multi-word synonym ("round shape") becomes words


def random_insertion(
    words: list[str], n: int, synonyms: Synonyms, rng: np.random.Generator
) -> list[str]:
    """Inserts, `n` times, a synonym of a random non-stop word at a random position."""
    out = list(words)
    for _ in range(n):
        candidates = _replaceable(out, synonyms)
        if not candidates:
            break
        options = _synonyms_of(out[candidates[rng.integers(len(candidates))]], synonyms)
        position = int(rng.integers(len(out) + 1))
        out[position:position] = options[rng.integers(len(options))].split()
    return out


def random_swap(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """Swaps two distinct random positions, `n` times (nothing to do under two words)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.choice(len(out), size=2, replace=False)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """Drops each word with probability `p`; when all would go, one random word stays."""
    if len(words) < 2:
        return list(words)
    keep = rng.random(len(words)) >= p
    if not keep.any():
        return [words[rng.integers(len(words))]]
    return [w for w, k in zip(words, keep, strict=True) if k]


@dataclasses.dataclass(frozen=True)
class CaptionAugmenter:
    """EDA on one caption: each operation applied with its probability, in the paper's order.

    Attributes:
        synonyms: where synonym replacement and random insertion find synonyms.
        synonym_replacement, random_insertion, random_swap, random_deletion: the probability
            that a caption gets that operation.
        alpha: the share of a caption's words that an operation changes (and RD's `p`).
    """

    synonyms: Synonyms
    synonym_replacement: float = 0.0
    random_insertion: float = 0.0
    random_swap: float = 0.0
    random_deletion: float = 0.0
    alpha: float = 0.1

    def __call__(self, caption: str, rng: np.random.Generator) -> str:
        words = caption.split()
        if not words:
            return caption
        if rng.random() < self.synonym_replacement:
            words = synonym_replacement(
                words, num_changes(self.alpha, len(words)), self.synonyms, rng
            )
        if rng.random() < self.random_insertion:
            words = random_insertion(words, num_changes(self.alpha, len(words)), self.synonyms, rng)
        if rng.random() < self.random_swap:
            words = random_swap(words, num_changes(self.alpha, len(words)), rng)
        if rng.random() < self.random_deletion:
            words = random_deletion(words, self.alpha, rng)
        return " ".join(words)


# ----------------------------------------------------------------------------- synonym tables


def _normalise_table(raw: Any, path: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"synonym table {path}: expected an object of word -> list of synonyms")
    table = {}
    for word, synonyms in raw.items():
        if not isinstance(synonyms, list) or not all(
            isinstance(s, str) and s.strip() for s in synonyms
        ):
            raise ValueError(
                f"synonym table {path}: the synonyms of {word!r} must be a list of non-empty "
                f"strings, got {synonyms!r}"
            )
        key = _key(str(word))
        if not key or " " in key:
            raise ValueError(f"synonym table {path}: {word!r} is not one word")
        table[key] = tuple(" ".join(s.lower().split()) for s in synonyms)
    return table


@functools.lru_cache(maxsize=8)
def load_synonym_table(path: str) -> dict[str, tuple[str, ...]]:
    """A word -> synonyms table from a `.json` object or a `.tsv` file (word, then synonyms).

    Raises:
        ValueError: the file is missing or is not such a table (the message names the file).
    """
    if not os.path.isfile(path):
        raise ValueError(f"synonym table {path}: no such file")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"synonym table {path}: not valid JSON ({e})") from None
        elif path.endswith(".tsv"):
            raw = {}
            for line, row in enumerate(csv.reader(f, delimiter="\t"), 1):
                if len(row) < 2:
                    raise ValueError(
                        f"synonym table {path}: line {line} needs a word and at least one "
                        "tab-separated synonym"
                    )
                raw[row[0]] = row[1:]
        else:
            raise ValueError(f"synonym table {path}: expected a .json or .tsv file")
    return _normalise_table(raw, path)


class WordNetSynonyms:
    """Synonyms from Princeton WordNet's database files (format: the wndb(5WN) manual page).

    A word's synonyms are the other words of every synset that holds it, in all four parts
    of speech, normalised as EDA does: lower case, `_` and `-` as spaces, letters only. The
    word is looked up as given (no lemmatisation: "circles" finds nothing; caption words
    that matter are base forms).

    The data files are read into memory once (~25 MB for WordNet 3.0) so that lookups from
    the pipeline's threads need no shared file position.
    """

    _POS = ("noun", "verb", "adj", "adv")

    def __init__(self, folder: str = DEFAULT_WORDNET_DIR):
        missing = [
            f"{kind}.{pos}"
            for pos in self._POS
            for kind in ("index", "data")
            if not os.path.isfile(os.path.join(folder, f"{kind}.{pos}"))
        ]
        if missing:
            raise ValueError(
                f"WordNet folder {folder}: missing {', '.join(missing)} (on Debian: "
                "apt-get install wordnet-base, then synonyms_path=/usr/share/wordnet)"
            )
        self.folder = folder
        self._data = {}
        self._index: dict[str, list[tuple[str, int]]] = {}
        for pos in self._POS:
            self._data[pos] = pathlib.Path(folder, f"data.{pos}").read_bytes()
            for line in pathlib.Path(folder, f"index.{pos}").read_text("utf-8").splitlines():
                if line.startswith("  "):  # the licence header
                    continue
                # lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt offsets
                fields = line.split()
                synset_count, pointer_count = int(fields[2]), int(fields[3])
                offsets = fields[6 + pointer_count : 6 + pointer_count + synset_count]
                self._index.setdefault(fields[0], []).extend((pos, int(o)) for o in offsets)
        self._cache: dict[str, tuple[str, ...]] = {}

    def _synset_words(self, pos: str, offset: int) -> list[str]:
        data = self._data[pos]
        line = data[offset : data.index(b"\n", offset)].decode("utf-8").split()
        # synset_offset lex_filenum ss_type w_cnt (2 hex digits) then w_cnt (word, lex_id) pairs
        count = int(line[3], 16)
        # Adjectives may carry a syntactic marker: "big(a)", "galore(ip)".
        return [w.split("(")[0] for w in line[4 : 4 + 2 * count : 2]]

    def get(self, word: str, default: Any = ()) -> tuple[str, ...]:
        key = word.lower().replace(" ", "_")
        if key not in self._cache:
            found: dict[str, None] = {}  # insertion-ordered set
            for pos, offset in self._index.get(key, ()):
                for lemma in self._synset_words(pos, offset):
                    text = lemma.replace("_", " ").replace("-", " ").lower()
                    text = " ".join("".join(c for c in text if c.isalpha() or c == " ").split())
                    if text and text != word.lower():
                        found[text] = None
            self._cache[key] = tuple(found)
        return self._cache[key] or default


@functools.lru_cache(maxsize=4)
def _wordnet(folder: str) -> WordNetSynonyms:
    return WordNetSynonyms(folder)


def synonym_source(kind: str, path: str = "") -> Synonyms:
    """The synonyms of config's `synonyms` kind (`SOURCES`), loaded once per process."""
    if kind == "file":
        if not path:
            raise ValueError(
                "data.text_augment.synonyms='file' needs data.text_augment.synonyms_path"
            )
        return load_synonym_table(path)
    if kind == "wordnet":
        return _wordnet(path or DEFAULT_WORDNET_DIR)
    if kind in BUILTIN_TABLES:
        return load_synonym_table(str(BUILTIN_TABLES[kind]))
    raise ValueError(f"data.text_augment.synonyms={kind!r} is not one of {SOURCES}")


OPERATIONS = ("synonym_replacement", "random_insertion", "random_swap", "random_deletion")


def from_config(section: Mapping[str, Any] | None) -> CaptionAugmenter | None:
    """The augmenter of a `data.text_augment` config section; None when it changes nothing.

    None (every probability 0, or no section) keeps the input pipeline's random stream
    exactly as without this module.
    """
    if section is None:
        return None
    for name in (*OPERATIONS, "alpha"):
        value = section[name]
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"data.text_augment.{name}={value} must be in [0, 1]")
    if not any(section[name] for name in OPERATIONS):
        return None
    return CaptionAugmenter(
        synonyms=synonym_source(section["synonyms"], section["synonyms_path"]),
        alpha=section["alpha"],
        **{name: section[name] for name in OPERATIONS},
    )
