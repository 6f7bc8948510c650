"""Caption metrics against pycocoevalcap called directly, hand-computed values, and the
attribute accuracy on clip_shapes-style captions."""

import math

import numpy as np
import pytest

from jaxmm.data.shapes import COLOUR_NAMES, SHAPES
from jaxmm.evaluate import captioning

pytest.importorskip("pycocoevalcap", reason="needs pycocoevalcap: pip install 'jaxmm[caption]'")

REFERENCES = [
    ["A red circle.", "there is a circle that is red", "a small red circle at the top"],
    ["a blue square near the bottom", "The square is blue!", "a big blue square"],
    ["a picture of a green star", "green star on a noisy background", "a star in green"],
    ["a pink diamond", "an image of a diamond whose colour is pink", "a pink-coloured diamond"],
]
CANDIDATES = ["a red circle", "a blue square at the bottom.", "a yellow star", "a pink diamond"]
TEXTS = [
    "A red circle.",
    "The dog's ball isn't here, it's gone!",
    "an orange-coloured star on a grey/white background",
    "Two shapes: a big cyan cross and a pink diamond.",
    "It's 3 o'clock... (really) \"quoted\"; and: colons?",
    "a BIG blue square -- near the top",
]

needs_java = pytest.mark.skipif(not captioning.java_available(), reason="no Java runs here")


def _library_scores(tokenizer):
    """The package's own scorers on the captions tokenised by `tokenizer`, as its eval.py
    runs them (ids, dicts of lists)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = tokenizer({i: [{"caption": c} for c in refs] for i, refs in enumerate(REFERENCES)})
    res = tokenizer({i: [{"caption": c}] for i, c in enumerate(CANDIDATES)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {
        **{f"bleu{n}": b for n, b in enumerate(bleu, 1)},
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": Cider().compute_score(gts, res)[0],
    }


@needs_java
def test_scores_equal_the_library_with_its_ptb_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    want = _library_scores(PTBTokenizer().tokenize)
    got = captioning.caption_scores(REFERENCES, CANDIDATES, use_java=True)
    assert set(got) == set(captioning.METRIC_NAMES)
    for key in captioning.METRIC_NAMES:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0 < got["bleu4"] < got["bleu1"] < 1 and got["cider"] > 0


def test_scores_with_the_python_tokenizer_equal_the_library():
    def tokenize(captions):
        return {k: [captioning.ptb_tokenize(c["caption"]) for c in v] for k, v in captions.items()}

    want = _library_scores(tokenize)
    got = captioning.caption_scores(REFERENCES, CANDIDATES, use_java=False)
    for key in captioning.METRIC_NAMES:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_bleu1_by_hand():
    """One image, candidate "a red circle" (3 tokens, all in the reference "a red circle at the
    top" of 6): precision 1, brevity penalty exp(1 - 6 / 3)."""
    got = captioning.caption_scores([["a red circle at the top"]], ["a red circle"], use_java=False)
    assert got["bleu1"] == pytest.approx(math.exp(1 - 6 / 3), rel=1e-6)


@needs_java
def test_python_tokenizer_matches_ptbtokenizer():
    want = captioning.tokenize({i: [t] for i, t in enumerate(TEXTS)}, use_java=True)
    for i, text in enumerate(TEXTS):
        assert captioning.ptb_tokenize(text) == want[i][0], text


def test_python_tokenizer_by_hand():
    assert captioning.ptb_tokenize("The dog's ball, (RED).") == "the dog 's ball -lrb- red -rrb-"


@pytest.mark.slow  # two JVMs, each loading METEOR's paraphrase table
@needs_java
def test_meteor_equals_the_library():
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenize = PTBTokenizer().tokenize
    gts = tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(REFERENCES)})
    res = tokenize({i: [{"caption": c}] for i, c in enumerate(CANDIDATES)})
    want = Meteor().compute_score(gts, res)[0]
    got = captioning.caption_scores(REFERENCES, CANDIDATES, meteor=True, use_java=True)
    assert got["meteor"] == pytest.approx(want, abs=1e-12) and 0 < want < 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2 reference lists for 1 candidates"):
        captioning.caption_scores([["a"], ["b"]], ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        captioning.caption_scores([[]], ["a"])


def test_attribute_accuracy():
    captions = [
        "a red circle",  # right
        "a circle that is red.",  # right, other order
        "a red square",  # wrong shape
        "a red circle and a blue circle",  # names another colour
        "a purple triangle",  # right, held out
        "a purple star",  # wrong, held out
    ]
    colour = [COLOUR_NAMES.index(c) for c in ("red", "red", "red", "red", "purple", "purple")]
    shape = [SHAPES.index(s) for s in ("circle", "circle", "circle", "circle", "triangle", "cross")]
    heldout = [False, False, False, False, True, True]
    got = captioning.attribute_accuracy(captions, colour, shape, COLOUR_NAMES, SHAPES, heldout)
    assert got == {"attribute_accuracy": 3 / 6, "heldout_attribute_accuracy": 1 / 2}
    alone = captioning.attribute_accuracy(captions[:1], colour[:1], shape[:1], COLOUR_NAMES, SHAPES)
    assert alone == {"attribute_accuracy": 1.0}
    none_held = captioning.attribute_accuracy(
        captions[:2], colour[:2], shape[:2], COLOUR_NAMES, SHAPES, [False, False]
    )
    assert np.isnan(none_held["heldout_attribute_accuracy"])
