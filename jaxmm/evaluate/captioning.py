"""Caption metrics: the COCO caption evaluation (BLEU, METEOR, ROUGE-L, CIDEr-D) and, on the
built-in `clip_shapes` data, whether a caption names the right colour and shape.

The language metrics are those of the COCO caption evaluation server (Chen et al. 2015),
computed by its Python package `pycocoevalcap` (`pip install 'jaxmm[caption]'`; imported only
when a metric is asked for, so jaxmm works without it): BLEU-1..4 (Papineni et al. 2002,
corpus-level, "closest" reference length), METEOR 1.5 (Denkowski and Lavie 2014), ROUGE-L
(Lin 2004, beta 1.2) and CIDEr-D (Vedantam et al. 2015; the package's `Cider` is the D
variant: clipped counts, a Gaussian length penalty, x10). The package's `eval.py` scores
captions after its PTB tokenisation, and so does this module:

- with Java, Stanford's PTBTokenizer (the jar the package ships; `-lowerCase
  -preserveLines`), then the punctuation tokens removed, exactly as the server does;
- without Java, `ptb_tokenize`: the same rules for plain English text in Python (lower-case;
  `n't` and the clitics `'s 're 've 'm 'll 'd` split off; punctuation split off and removed,
  hyphens and slashes inside words kept). It agrees with the jar on such text (tests compare
  them); exotic text (URLs, numbers with commas, abbreviations with dots) may tokenise
  differently.

METEOR needs Java too (the jar); it is computed only when asked for (`meteor=True`), as it
starts a JVM and loads a paraphrase table (seconds), and only where Java runs.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Sequence

import numpy as np

from jaxmm.data.shapes import caption_words

# The punctuation tokens pycocoevalcap's PTBTokenizer wrapper drops after tokenising.
PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ","]
    + [":", "-", "--", "...", ";"]
)
# PTB's clitics, split off a word (lower-case text): "dog's" -> "dog 's", "don't" -> "do n't".
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'m|'ll|'d)\b")
# A clitic, a word with inner hyphens, slashes, apostrophes or dots kept (PTB keeps
# "orange-coloured"), an ellipsis or dash, or any other single non-space character.
_TOKEN = re.compile(r"n't|'(?:s|re|ve|m|ll|d)\b|\w+(?:[-/.']\w+)*\.?|\.\.\.|--|\S")
# PTB's names for brackets, lower-cased by `-lowerCase` (so the server keeps them), and the
# quotes it turns into `` and '' (which it drops).
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_QUOTES = {'"': "''"}
METRIC_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")


def _pycocoevalcap():
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        raise ImportError(
            "caption metrics need pycocoevalcap: pip install 'jaxmm[caption]'"
        ) from None


def java_available() -> bool:
    """Whether a `java` runs here (PTBTokenizer's and METEOR's jars need it)."""
    return _java_runs()


@functools.cache
def _java_runs() -> bool:
    if shutil.which("java") is None:
        return False
    try:
        return subprocess.run(["java", "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ptb_tokenize(text: str) -> str:
    """A caption tokenised as the COCO evaluation does, in Python (see the module docstring):
    lower-case PTB tokens without the punctuation tokens, joined by spaces."""
    text = _CLITIC.sub(r" \1", text.lower().replace("\n", " "))
    tokens = []
    for token in _TOKEN.findall(text):
        # PTB splits a full stop off the word it ends ("dogs." -> "dogs .").
        if token[0].isalnum() and token.endswith("."):
            token = token[:-1]
        token = _BRACKETS.get(token, _QUOTES.get(token, token))
        if token not in PUNCTUATION:
            tokens.append(token)
    return " ".join(tokens)


def tokenize(captions: dict[int, list[str]], use_java: bool | None = None) -> dict[int, list[str]]:
    """`{id: [caption, ...]}` tokenised for scoring: PTBTokenizer with Java (`use_java=None`:
    when it runs here), `ptb_tokenize` without."""
    if use_java is None:
        use_java = java_available()
    if not use_java:
        return {key: [ptb_tokenize(c) for c in texts] for key, texts in captions.items()}
    _pycocoevalcap()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize(
        {key: [{"caption": c} for c in texts] for key, texts in captions.items()}
    )


def caption_scores(
    references: Sequence[Sequence[str]],
    candidates: Sequence[str],
    *,
    meteor: bool = False,
    use_java: bool | None = None,
) -> dict[str, float]:
    """The COCO caption metrics of `candidates` against `references`.

    Args:
        references: for each image, its reference captions (at least one).
        candidates: one generated caption per image.
        meteor: also compute METEOR (needs Java; a `RuntimeError` without it).
        use_java: tokenise with PTBTokenizer (True), in Python (False), or PTBTokenizer where
            Java runs (None).

    Returns:
        `bleu1`..`bleu4`, `rouge_l`, `cider` (and `meteor`), each in [0, 1] except CIDEr-D
        (x10 as the server reports it), as the corpus scores of the package.
    """
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} reference lists for {len(candidates)} candidates")
    if not candidates:
        raise ValueError("no captions to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every image needs at least one reference caption")
    _pycocoevalcap()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = tokenize({i: list(refs) for i, refs in enumerate(references)}, use_java)
    res = tokenize({i: [c] for i, c in enumerate(candidates)}, use_java)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"bleu{n}": float(b) for n, b in enumerate(bleu, 1)}
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    if meteor:
        if not java_available():
            raise RuntimeError("METEOR needs Java (its scorer is a jar); none runs here")
        from pycocoevalcap.meteor.meteor import Meteor

        scores["meteor"] = float(Meteor().compute_score(gts, res)[0])  # its JVM ends with it
    return scores


def names_attributes(caption: str, colour: str, shape: str, colours, shapes) -> bool:
    """Whether `caption` names `colour` and `shape` and no other colour or shape."""
    return set(caption_words(caption, tuple(colours))) == {colour} and set(
        caption_words(caption, tuple(shapes))
    ) == {shape}


def attribute_accuracy(
    candidates: Sequence[str],
    colours: Sequence[int],
    shapes: Sequence[int],
    colour_names: Sequence[str],
    shape_names: Sequence[str],
    heldout: Sequence[bool] | None = None,
) -> dict[str, float]:
    """The fraction of captions naming their image's colour and shape (and no other; see
    `names_attributes`), on `clip_shapes`-style images of one object.

    Args:
        candidates: one generated caption per image.
        colours, shapes: each image's colour and shape ids (indices into the names).
        colour_names, shape_names: the vocabularies (`shapes.COLOUR_NAMES`, `shapes.SHAPES`).
        heldout: whether each image's colour-shape pair was held out of training.

    Returns:
        `attribute_accuracy`, and with `heldout` `heldout_attribute_accuracy` (NaN when no
        image is held out).
    """
    correct = np.asarray(
        [
            names_attributes(c, colour_names[k], shape_names[s], colour_names, shape_names)
            for c, k, s in zip(candidates, colours, shapes, strict=True)
        ],
        bool,
    )
    metrics = {"attribute_accuracy": float(correct.mean())}
    if heldout is not None:
        mask = np.asarray(heldout, bool)
        metrics["heldout_attribute_accuracy"] = (
            float(correct[mask].mean()) if mask.any() else float("nan")
        )
    return metrics
