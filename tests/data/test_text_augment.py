"""Caption augmentation (EDA, Wei & Zou 2019) and its hook in the input pipeline.

The reference is the paper's Section 2.1, for a sentence of `l` words and `n = alpha * l`:
SR replaces `n` non-stop words by a random synonym each; RI inserts a random synonym of a
random non-stop word at a random position, `n` times; RS swaps two random words, `n` times;
RD removes each word with probability `p`. The WordNet reader is checked against nltk's
`WordNetCorpusReader` on the same database where both are installed, and against a
two-synset database written by hand from the wndb(5WN) format everywhere.
"""

import collections
import json
import os
import shutil
import warnings

import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import clip_small
from jaxmm.data import pipeline, shapes, text_augment
from jaxmm.data.text_augment import (
    CaptionAugmenter,
    WordNetSynonyms,
    load_synonym_table,
    num_changes,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
)
from jaxmm.data.tokenizer import load_clip_tokenizer

TABLE = {
    "big": ("large", "huge"),
    "red": ("scarlet",),
    "circle": ("round shape",),
    "the": ("teh",),  # a stop word: never replaced even though it has a synonym
}
# Ten distinct words, three of which have synonyms in TABLE.
SENTENCE = "the big red circle sits on a plain grey background".split()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _sigma_bound(p: float, trials: int, sigmas: float = 5.0) -> float:
    """`sigmas` binomial standard deviations of a frequency: a false alarm is < 1e-6."""
    return sigmas * np.sqrt(p * (1 - p) / trials)


@pytest.mark.parametrize(
    "alpha, words, expected",
    # n = alpha * l rounded half up, at least 1 (0.5 -> 1, 1.5 -> 2, 2.5 -> 3 by hand).
    [(0.1, 4, 1), (0.1, 5, 1), (0.1, 14, 1), (0.1, 15, 2), (0.1, 25, 3), (0.3, 10, 3), (0.0, 9, 1)],
)
def test_number_of_changes(alpha, words, expected):
    assert num_changes(alpha, words) == expected


def test_synonym_replacement_changes_n_non_stop_words_to_their_synonyms():
    for seed in range(50):
        out = synonym_replacement(SENTENCE, 2, TABLE, _rng(seed))
        # Single-word synonyms here except "round shape": compare word by word without it.
        out = " ".join(out).replace("round shape", "ROUND_SHAPE").split()
        changed = [i for i, (a, b) in enumerate(zip(SENTENCE, out, strict=True)) if a != b]
        assert len(changed) == 2
        for i in changed:
            assert out[i].replace("ROUND_SHAPE", "round shape") in TABLE[SENTENCE[i]]
        assert out[0] == "the"  # stop word


def test_synonym_replacement_with_fewer_candidates_than_n_replaces_all():
    out = synonym_replacement(SENTENCE, 8, TABLE, _rng())
    assert "big" not in out and "red" not in out and "circle" not in out
    assert out[0] == "the" and "round" in out and "shape" in out


def test_synonym_replacement_without_candidates_is_the_identity():
    words = "a plain grey background".split()
    assert synonym_replacement(words, 3, TABLE, _rng()) == words


def test_random_insertion_adds_n_synonyms_and_keeps_the_words_in_order():
    for seed in range(50):
        out = random_insertion(SENTENCE, 3, {"big": ("large",), "red": ("scarlet",)}, _rng(seed))
        assert len(out) == len(SENTENCE) + 3
        extra = list((collections.Counter(out) - collections.Counter(SENTENCE)).elements())
        assert len(extra) == 3 and set(extra) <= {"large", "scarlet"}
        assert [w for w in out if w in SENTENCE] == SENTENCE  # a subsequence, in order


def test_random_insertion_never_inserts_synonyms_of_stop_words():
    out = random_insertion("the cat sat on the mat".split(), 5, {"the": ("teh",)}, _rng())
    assert out == "the cat sat on the mat".split()


def test_random_swap_permutes_n_pairs():
    for seed in range(50):
        out = random_swap(SENTENCE, 1, _rng(seed))
        assert sorted(out) == sorted(SENTENCE)
        assert sum(a != b for a, b in zip(SENTENCE, out, strict=True)) == 2  # distinct words
    assert random_swap(["alone"], 3, _rng()) == ["alone"]


def test_random_deletion_keeps_each_word_with_probability_one_minus_p():
    p, trials = 0.3, 2000
    kept = sum(len(random_deletion(SENTENCE, p, _rng(s))) for s in range(trials))
    frequency = kept / (trials * len(SENTENCE))
    # Exact when at least one word survives, which fails with probability 0.3^10 ~ 6e-6.
    assert abs(frequency - (1 - p)) < _sigma_bound(1 - p, trials * len(SENTENCE))


def test_random_deletion_never_empties_a_caption():
    for seed in range(20):
        out = random_deletion(SENTENCE, 1.0, _rng(seed))
        assert len(out) == 1 and out[0] in SENTENCE
    assert random_deletion(["circle"], 1.0, _rng()) == ["circle"]


def test_no_operation_mix_gives_an_empty_caption():
    augment = CaptionAugmenter(TABLE, 1.0, 1.0, 1.0, 1.0, alpha=1.0)
    for seed, caption in enumerate(["circle", "a", "the big", ". .", *shapes_captions(200)]):
        assert augment(caption, _rng(seed)).split()


def shapes_captions(count: int) -> list[str]:
    """The first `count` training captions of the built-in dataset (no pixels rendered)."""
    captions = shapes.all_captions(shapes.DEFAULT_CONFIG)
    return [next(captions) for _ in range(count)]


@pytest.mark.parametrize("operation", text_augment.OPERATIONS)
def test_each_operation_fires_with_its_probability(operation):
    probability, trials = 0.3, 3000
    augment = CaptionAugmenter(TABLE, **{operation: probability}, alpha=0.1)
    # Every operation changes this caption (distinct words, all with synonyms) whenever it
    # fires, except RD, which keeps all three words with probability 0.9^3.
    caption = "big red circle"
    changed = sum(augment(caption, _rng(s)) != caption for s in range(trials))
    expected = probability * (1 - 0.9**3 if operation == "random_deletion" else 1.0)
    assert abs(changed / trials - expected) < _sigma_bound(expected, trials)


def test_same_seed_same_caption_and_seeds_differ():
    augment = CaptionAugmenter(TABLE, 0.5, 0.5, 0.5, 0.5, alpha=0.2)
    caption = " ".join(SENTENCE)
    outputs = [augment(caption, _rng(s)) for s in range(40)]
    assert outputs == [augment(caption, _rng(s)) for s in range(40)]
    assert len(set(outputs)) > 10


# ----------------------------------------------------------------------------- tables


def test_user_tables_in_json_and_tsv(tmp_path):
    json_path = tmp_path / "syn.json"
    json_path.write_text(json.dumps({"Big": ["Large", "huge  one"], "red": ["scarlet"]}))
    tsv_path = tmp_path / "syn.tsv"
    tsv_path.write_text("Big\tLarge\thuge  one\nred\tscarlet\n")
    expected = {"big": ("large", "huge one"), "red": ("scarlet",)}
    assert load_synonym_table(str(json_path)) == expected
    assert load_synonym_table(str(tsv_path)) == expected


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("list.json", '["big", "large"]', "expected an object"),
        ("str.json", '{"big": "large"}', "'big' must be a list"),
        ("empty.json", '{"big": [""]}', "'big' must be a list of non-empty strings"),
        ("phrase.json", '{"very big": ["huge"]}', "is not one word"),
        ("bad.tsv", "big\tlarge\nred\n", "line 2 needs a word"),
        ("table.txt", "big large", "expected a .json or .tsv file"),
    ],
)
def test_malformed_tables_fail_naming_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_synonym_table(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_table_fails_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}/nope.json: no such file"):
        load_synonym_table(str(tmp_path / "nope.json"))


def _caption_vocabulary() -> set[str]:
    """Words of the single-object and the multi-object configs' captions."""
    (multi,) = (c for c in shapes.ClipShapes.BUILDER_CONFIGS if c.name == "multi")
    captions = shapes.all_captions(multi)
    return {
        w.lower().strip(".,:")
        for caption in [*shapes_captions(2000), *(next(captions) for _ in range(2000))]
        for w in caption.replace("-", " ").split()
    }


def test_builtin_table_covers_clip_shapes_words_and_keeps_their_meaning():
    table = text_augment.synonym_source("shapes")
    vocabulary = _caption_vocabulary()
    assert set(table) <= vocabulary, f"not caption words: {set(table) - vocabulary}"
    assert not set(table) & text_augment.STOP_WORDS  # such entries could never be used
    # A colour's or a shape's synonyms never name another colour or shape: EDA must not
    # turn a "red circle" caption into a wrong one.
    names = set(shapes.COLOUR_NAMES) | set(shapes.SHAPES)
    for word in names:
        others = names - {word}
        assert table[word], word
        assert not {w for s in table[word] for w in s.split()} & others, word


# ----------------------------------------------------------------------------- config


def _section(**overrides) -> ConfigDict:
    section = clip_small.get_config().data.text_augment
    section.update(overrides)
    return section


def test_default_config_turns_augmentation_off():
    assert text_augment.from_config(_section()) is None
    assert text_augment.from_config(None) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(random_swap=1.5), r"data.text_augment.random_swap=1.5 must be in \[0, 1\]"),
        (dict(alpha=-0.1), r"data.text_augment.alpha=-0.1 must be in \[0, 1\]"),
        (dict(random_swap=0.1, synonyms="thesaurus"), "synonyms='thesaurus' is not one of"),
        (dict(random_swap=0.1, synonyms="file"), "needs data.text_augment.synonyms_path"),
        (
            dict(random_swap=0.1, synonyms="wordnet", synonyms_path="/no/wordnet"),
            "WordNet folder /no/wordnet: missing index.noun",
        ),
    ],
)
def test_bad_config_values_fail_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        text_augment.from_config(_section(**overrides))
    assert "\n" not in str(error.value)


def test_config_with_user_table(tmp_path):
    path = tmp_path / "syn.tsv"
    path.write_text("circle\tdisc\n")
    augment = text_augment.from_config(
        _section(synonym_replacement=1.0, synonyms="file", synonyms_path=str(path))
    )
    assert augment("a red circle", _rng()) == "a red disc"


# ----------------------------------------------------------------------------- pipeline


def _fake_examples(count: int) -> list[dict]:
    rng = _rng(1)
    return [
        {
            "image": rng.integers(0, 256, (12, 12, 3), dtype=np.uint8),
            "captions": [c.encode() for c in shapes_captions(3 * (i + 1))[3 * i :]],
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def _data_config(**text_augment_overrides) -> ConfigDict:
    data = clip_small.get_config().data
    data.update(image_size=8, context_length=24, num_threads=1)
    data.text_augment.update(text_augment_overrides)
    return data


def _examples(source, tokenizer, data, seeds):
    return [
        pipeline.image_text_example(e, _rng(s), tokenizer=tokenizer, config=data)
        for e, s in zip(source, seeds, strict=True)
    ]


def test_pipeline_stream_unchanged_when_augmentation_is_off(tokenizer):
    source = _fake_examples(16)
    default = _data_config()
    without_section = _data_config()
    del without_section["text_augment"]  # the pipeline as it was before the section existed
    for a, b in zip(
        _examples(source, tokenizer, default, range(16)),
        _examples(source, tokenizer, without_section, range(16)),
        strict=True,
    ):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_pipeline_augments_captions_deterministically(tokenizer):
    source = _fake_examples(16)
    off = _examples(source, tokenizer, _data_config(), range(16))
    on = _data_config(synonym_replacement=1.0, random_swap=0.5)
    first, again = (_examples(source, tokenizer, on, range(16)) for _ in range(2))
    for a, b, plain in zip(first, again, off, strict=True):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        # The image is drawn before the caption, so augmenting text leaves it unchanged.
        np.testing.assert_array_equal(a["image"], plain["image"])
    changed = sum(
        not np.array_equal(a["tokens"], p["tokens"]) for a, p in zip(first, off, strict=True)
    )
    assert changed >= 12  # every caption has a word with a synonym; SR always fires


def test_augmented_batches_do_not_depend_on_the_process_count(tokenizer):
    source = _fake_examples(8)
    data = _data_config(synonym_replacement=0.5, random_insertion=0.5, random_deletion=0.5)
    example_fn = lambda e, r: pipeline.image_text_example(e, r, tokenizer=tokenizer, config=data)  # noqa: E731

    def batches(index, count):
        it = pipeline.train_iterator(
            source, example_fn, data, batch_size=4, seed=3, process_index=index, process_count=count
        )
        return [next(it)["tokens"] for _ in range(3)]

    whole = batches(0, 1)
    halves = [np.concatenate(parts) for parts in zip(batches(0, 2), batches(1, 2), strict=True)]
    np.testing.assert_array_equal(np.stack(whole), np.stack(halves))


# ----------------------------------------------------------------------------- WordNet


def _write_wordnet(folder) -> None:
    """A two-synset WordNet database in the wndb(5WN) format, byte offsets worked out here."""
    header = "  1 This is a licence header line, as in WordNet's files.\n"
    synsets = [
        # offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt | gloss
        "{:08d} 00 a 02 large 0 big(a) 0 000 | above average in size",
        "{:08d} 00 s 03 big 0 Boastful 0 braggy-ish 0 000 | exhibiting self-importance",
    ]
    data, offsets = header, []
    for line in synsets:
        offsets.append(len(data.encode()))
        data += line.format(offsets[-1]) + "\n"
    index = header + (
        f"big a 2 0 2 0 {offsets[0]:08d} {offsets[1]:08d}\nlarge a 1 0 1 0 {offsets[0]:08d}\n"
    )
    (folder / "data.adj").write_text(data)
    (folder / "index.adj").write_text(index)
    for pos in ("noun", "verb", "adv"):
        (folder / f"data.{pos}").write_text(header)
        (folder / f"index.{pos}").write_text(header)


def test_wordnet_reader_on_a_database_written_from_the_format(tmp_path):
    _write_wordnet(tmp_path)
    synonyms = WordNetSynonyms(str(tmp_path))
    # Markers "(a)" dropped, case folded, "-" as a space, the word itself left out.
    assert synonyms.get("big") == ("large", "boastful", "braggy ish")
    assert synonyms.get("large") == ("big",)
    assert synonyms.get("circle") == ()


@pytest.fixture(scope="module")
def nltk_wordnet(tmp_path_factory):
    """nltk's reader on Debian's database (skips without either)."""
    folder = text_augment.DEFAULT_WORDNET_DIR
    if not os.path.isfile(os.path.join(folder, "index.noun")):
        pytest.skip(f"no WordNet database in {folder} (Debian: apt-get install wordnet-base)")
    nltk_data = pytest.importorskip("nltk.data", reason="nltk is not installed")
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    data_root = tmp_path_factory.mktemp("nltk_data")
    root = data_root / "wordnet"
    root.mkdir()
    for name in os.listdir(folder):
        if name.startswith(("index.", "data.")) or name.endswith(".exc"):
            shutil.copy(os.path.join(folder, name), root / name)
    # Debian leaves out `lexnames`, which nltk reads at start-up only to name each synset's
    # lexicographer file; synonyms do not depend on those names.
    (root / "lexnames").write_text("".join(f"{i:02d} file{i} 0\n" for i in range(45)))
    nltk_data.path.append(str(data_root))  # nltk reads only from its data roots

    class DebianWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # nltk maps a database other than its own download to WordNet 3.0 for the
            # multilingual functions; Debian's is WordNet 3.0 itself, and they are not used.
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": not used
        warnings.simplefilter("ignore", UserWarning)
        return DebianWordNet(str(root), None)


def _as_eda_word(lemma: str) -> str:
    """EDA's clean-up of a WordNet lemma: lower case, "_" and "-" as spaces, letters only."""
    text = lemma.replace("_", " ").replace("-", " ").lower()
    return " ".join("".join(c for c in text if c.isalpha() or c == " ").split())


@pytest.mark.parametrize("word", ["big", "large", "circle", "picture", "red", "small", "bright"])
def test_wordnet_reader_agrees_with_nltk(nltk_wordnet, word):
    expected = {
        _as_eda_word(lemma)
        for synset in nltk_wordnet.synsets(word)
        # nltk also lemmatises ("circles" -> "circle"); keep the synsets that hold the word.
        if word in {name.lower() for name in synset.lemma_names()}
        for lemma in synset.lemma_names()
    } - {word}
    ours = text_augment.synonym_source("wordnet").get(word)
    assert len(ours) == len(set(ours))
    assert set(ours) == expected


def test_config_check_accepts_the_section_and_rejects_typos():
    # The trainer's smoke run with clip_small's defaults is in tests/train/test_configs.py;
    # the hook above is what turning an operation on adds to it.
    from jaxmm.train.config_check import check_config  # noqa: PLC0415

    config = clip_small.get_config("smoke")
    config.data.text_augment.update(synonym_replacement=0.5, random_deletion=0.5)
    check_config(config)
    config.data.text_augment.random_swop = 0.5
    with pytest.raises(ValueError, match="data.text_augment.random_swop"):
        check_config(config)
