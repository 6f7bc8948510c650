"""VQA-v2 accuracy: answer normalisation, the soft "3 of 10 humans" score, answer heads' targets.

The protocol is the one of the VQA challenge's evaluation script (`vqaEval.py` in the VQA
API, Antol et al. 2015; Goyal et al. 2017):

* An answer is normalised before comparison (`normalize_answer`): punctuation removed or
  turned into spaces, periods dropped unless a digit follows ("3.5" stays), every mark
  deleted from an answer holding a number with a comma ("1,000" -> "1000"), lower case,
  number words zero..ten as digits, articles a/an/the removed, and apostrophe-less
  contractions restored ("dont" -> "don't").
* A prediction scores `min(#humans who gave it / 3, 1)`, averaged over the leave-one-out
  subsets of the human answers (10 subsets of 9 for VQA-v2's 10 answers): the score of
  `soft_accuracy`. An answer 3 of VQA-v2's 10 humans gave scores 0.9, not 1.
* The dataset's accuracy is the mean over questions (`vqa_metrics`).

Answer heads (VQA models that classify over a fixed answer list, as in bottom-up top-down
attention) train on the `size` most frequent normalised answers (`answer_vocabulary`) with
each answer's soft score as its target (`answer_targets`).

Human answers arrive either as a list of strings or as the dataset's `answers` field: one
question's answers joined by "\\n", `bytes` when read from disk (`split_answers`). Every
function here takes either form.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence

import numpy as np

# The evaluation script's tables, verbatim (including its keys that can never match, such as
# "Id've" after lower-casing, and its one reversed entry "somebody'd" -> "somebodyd"): the
# point is to score exactly as the leaderboard does.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
# "none" -> "0" too: "how many ...?" answered "none" counts as the number.
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
# Apostrophes, colons and periods are not here: periods have their own rule, the others stay.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<")
PUNCTUATION += ("@", "`", ",", "?", "!")
# The script writes this "(?!<=\d)(\.)(?!\d)": its "(?!<=\d)" is a lookahead that never fires
# before a ".", so what it does is drop every period not followed by a digit ("5." -> "5").
PERIOD = re.compile(r"\.(?!\d)")
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A prediction is fully right once this many of the humans compared with gave it.
HUMANS_FOR_FULL_CREDIT = 3


def _text(x: str | bytes) -> str:
    """Stored text comes back as bytes from disk and as str from mock data."""
    return x.decode("utf-8") if isinstance(x, bytes) else x


def _strip_punctuation(text: str) -> str:
    # A mark next to a space ("red, blue") or any text holding a number with a comma
    # ("1,000") loses the mark; elsewhere the mark separates words ("red,blue" -> "red blue").
    # The test looks at the input, not the text as rewritten so far, as the script does.
    delete_all = DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        delete = delete_all or f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete else " ")
    return PERIOD.sub("", out)


def normalize_answer(text: str | bytes) -> str:
    """The VQA evaluation's normal form of an answer (its `processPunctuation` followed by
    `processDigitArticle`).

    Examples: "Two" -> "2", "the dog." -> "dog", "dont" -> "don't", "1,000" -> "1000",
    "yes!" -> "yes", "3.5" -> "3.5", "red,blue" -> "red blue", "None" -> "0".

    Args:
        text: an answer, a prediction or a human's.

    Returns:
        Space-separated lower-case words; "" when nothing is left (e.g. "the").
    """
    text = _text(text).replace("\n", " ").replace("\t", " ").strip()
    words = []
    for word in _strip_punctuation(text).lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def split_answers(field: str | bytes) -> list[str]:
    """One question's human answers from the dataset's "\\n"-joined `answers` field.

    Args:
        field: e.g. `b"yes\\nyes\\nno"`, as read from disk, or the same as `str`.

    Returns:
        The answers in stored order (`["yes", "yes", "no"]`); `[]` for an empty field.
    """
    text = _text(field)
    return text.split("\n") if text else []


def _answer_list(answers: Sequence[str] | str | bytes) -> list[str]:
    """A list of human answers, from a list or from the dataset's joined field."""
    if isinstance(answers, (str, bytes)):
        return split_answers(answers)
    return [_text(a) for a in answers]


def _score(matches: int, num_answers: int) -> float:
    """The leave-one-out soft score of an answer `matches` of `num_answers` humans gave.

    Leaving out one of the `matches` humans who gave it leaves `matches - 1` agreeing; leaving
    out any other human leaves `matches`. One human's answer alone is an exact match.
    """
    if num_answers == 0 or matches == 0:
        return 0.0
    if num_answers == 1:
        return 1.0
    full = HUMANS_FOR_FULL_CREDIT
    left_out_agreeing = matches * min(1.0, (matches - 1) / full)
    left_out_other = (num_answers - matches) * min(1.0, matches / full)
    return (left_out_agreeing + left_out_other) / num_answers


def soft_accuracy(
    prediction: str | bytes | None, human_answers: Sequence[str] | str | bytes
) -> float:
    """VQA-v2 accuracy of one prediction: `min(#humans that gave it / 3, 1)`, averaged over
    the leave-one-out subsets of the human answers, as the official script computes it.

    With VQA-v2's 10 answers that is the mean over the 10 subsets of 9, so an answer 1, 2, 3
    or 4 humans gave scores 0.3, 0.6, 0.9 and 1.0. With n < 10 answers the n subsets of n - 1
    are used, so with 2 or 3 answers even a unanimous answer scores below 1 (1/3, 2/3); with
    one answer the score is exact match.

    Prediction and human answers are both compared after `normalize_answer`. The official
    script normalises the prediction in full but the human answers only for punctuation, and
    only when they disagree, relying on VQA-v2's answers being stored in normal form; on such
    answers the two agree, while a user's file with "Two" or "The dog." scores as intended here.

    Args:
        prediction: the predicted answer; None or one that normalises to "" scores 0.
        human_answers: the question's human answers, a list or the "\\n"-joined field.

    Returns:
        The score, in [0, 1].
    """
    if prediction is None:
        return 0.0
    predicted = normalize_answer(prediction)
    if not predicted:
        return 0.0
    answers = [normalize_answer(a) for a in _answer_list(human_answers)]
    return _score(answers.count(predicted), len(answers))


def answer_vocabulary(
    answer_lists: Iterable[Sequence[str] | str | bytes], size: int
) -> tuple[str, ...]:
    """The `size` most frequent normalised answers: the classes of an answer head.

    Every human answer counts once (a question whose ten humans said "2" adds ten votes for
    "2"); answers that normalise to "" are not counted. Equal counts are ordered
    alphabetically, so the vocabulary is the same for the same data, in any order.

    Args:
        answer_lists: per question, its human answers (a list or the joined field).
        size: the number of answers kept.

    Returns:
        At most `size` normalised answers, most frequent first (fewer if there are fewer).
    """
    if size < 1:
        raise ValueError(f"answer vocabulary size must be positive, got {size}")
    counts = collections.Counter()
    for answers in answer_lists:
        counts.update(a for a in map(normalize_answer, _answer_list(answers)) if a)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(answer for answer, _ in ranked[:size])


def answer_targets(
    human_answers: Sequence[str] | str | bytes, vocabulary: Sequence[str]
) -> np.ndarray:
    """The soft training target of one question over an answer vocabulary.

    Entry `v` is `soft_accuracy(vocabulary[v], human_answers)`: what predicting that answer
    would score. Human answers outside the vocabulary add nothing, so a row may be all zeros.

    Args:
        human_answers: the question's human answers (a list or the joined field).
        vocabulary: normalised answers `[V]`, as `answer_vocabulary` returns.

    Returns:
        `[V]` float32 scores in [0, 1].
    """
    answers = [normalize_answer(a) for a in _answer_list(human_answers)]
    index = {answer: i for i, answer in enumerate(vocabulary)}
    targets = np.zeros(len(vocabulary), np.float32)
    for answer, matches in collections.Counter(answers).items():
        if answer and answer in index:
            targets[index[answer]] = _score(matches, len(answers))
    return targets


def _metric_name(question_type: str) -> str:
    """A question type as a metrics.jsonl key suffix: "yes/no" -> "yes_no"."""
    return re.sub(r"[^0-9a-z]+", "_", question_type.lower()).strip("_")


def vqa_metrics(
    predictions: Sequence[str | bytes | None],
    human_answers: Sequence[Sequence[str] | str | bytes],
    question_types: Sequence[str | bytes] | None = None,
    heldout: Sequence[bool] | np.ndarray | None = None,
) -> dict[str, float]:
    """VQA accuracy of a split: the mean `soft_accuracy` over its questions.

    A prediction is scored against the humans only: one outside any answer vocabulary scores
    what the humans say (usually 0), an empty or None prediction scores 0.

    Args:
        predictions: `[N]` predicted answers.
        human_answers: `[N]` each question's human answers (lists or the joined field).
        question_types: `[N]` optional type per question (e.g. "yes/no", "what color is the");
            "" for none.
        heldout: `[N]` optional flags of questions about what training never showed.

    Returns:
        `vqa/accuracy`; `vqa/accuracy_<type>` for each non-empty type, the type lower-cased
        with other characters than letters and digits as "_" (types that then coincide are
        pooled); `vqa/heldout_accuracy` and `vqa/seen_accuracy` when any question is heldout
        (the latter when any is not).

    Raises:
        ValueError: the sequences differ in length, or there are no questions.
    """
    n = len(predictions)
    for name, values in (
        ("human_answers", human_answers),
        ("question_types", question_types),
        ("heldout", heldout),
    ):
        if values is not None and len(values) != n:
            raise ValueError(f"vqa_metrics: {n} predictions but {len(values)} {name}")
    if n == 0:
        raise ValueError("vqa_metrics: no questions to score")
    scores = np.array(
        [soft_accuracy(p, a) for p, a in zip(predictions, human_answers, strict=True)]
    )  # [N]
    metrics = {"vqa/accuracy": float(scores.mean())}
    if question_types is not None:
        names = np.array([_metric_name(_text(t)) for t in question_types], dtype=object)
        for name in sorted(set(names) - {""}):
            metrics[f"vqa/accuracy_{name}"] = float(scores[names == name].mean())
    if heldout is not None:
        heldout = np.asarray(heldout, bool)
        if heldout.any():
            metrics["vqa/heldout_accuracy"] = float(scores[heldout].mean())
        if heldout.any() and not heldout.all():
            metrics["vqa/seen_accuracy"] = float(scores[~heldout].mean())
    return metrics
