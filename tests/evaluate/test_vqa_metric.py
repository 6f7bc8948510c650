"""Tests for jaxmm.evaluate.vqa against values worked out by hand from VQA-v2's evaluation rules.

The soft score of an answer k of 10 humans gave is the mean over the 10 leave-one-out subsets
of min(matches / 3, 1): the k subsets missing an agreeing human hold k - 1 matches, the other
10 - k hold k. So k = 1, 2, 3, 4 give (0 + 9/3) / 10 = 0.3, (2/3 + 8*2/3) / 10 = 0.6,
(3*2/3 + 7) / 10 = 0.9 and (4 + 6) / 10 = 1.0.
"""

import itertools

import numpy as np
import pytest

from jaxmm.evaluate import vqa


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        # The examples the evaluation script's rules are written for.
        ("Two", "2"),
        ("the dog.", "dog"),
        ("dont", "don't"),
        ("1,000", "1000"),
        ("yes!", "yes"),
        # Decimal points stay; a period not before a digit goes.
        ("3.5", "3.5"),
        ("5.", "5"),
        # A mark beside a space is deleted, one between words becomes a space.
        ("red, blue", "red blue"),
        ("red,blue", "red blue"),
        ("t-shirt", "t shirt"),
        # A number with a comma anywhere deletes every mark instead.
        ("1,000 t-shirts!", "1000 tshirts"),
        # Whether a mark touches a space is judged on the answer as given: "-" turning into a
        # space must not make the other commas count as touching one.
        ("black,-white,grey", "black white grey"),
        # Numbers are mapped word by word, after punctuation split them.
        ("one-way", "1 way"),
        ("None", "0"),
        ("A Dog\t", "dog"),
        ("the", ""),
        ("It's a Cat", "it's cat"),
        ("Wont", "won't"),
        ("12:30", "12:30"),
        (b"Two", "2"),
    ],
)
def test_normalize_answer(text, normal):
    assert vqa.normalize_answer(text) == normal


@pytest.mark.parametrize(("matches", "score"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0)])
def test_soft_accuracy_of_ten_answers(matches, score):
    answers = ["2"] * matches + ["3", "4", "many", "5", "6", "7", "8", "9", "10", "11"]
    answers = answers[:10]
    assert vqa.soft_accuracy("two", answers) == pytest.approx(score)
    assert vqa.soft_accuracy("two", "\n".join(answers).encode()) == pytest.approx(score)


def _official_loop(prediction: str, answers: list[str]) -> float:
    """The evaluation script's loop: leave out each human in turn, count the others agreeing."""
    accs = []
    for left_out in range(len(answers)):
        others = [a for i, a in enumerate(answers) if i != left_out]
        accs.append(min(1.0, sum(a == prediction for a in others) / 3))
    return sum(accs) / len(accs)


def test_soft_accuracy_matches_the_leave_one_out_loop():
    for n in range(2, 11):
        for answers in itertools.product(["yes", "no"], repeat=n):
            for prediction in ("yes", "no", "maybe"):
                want = _official_loop(prediction, list(answers))
                assert vqa.soft_accuracy(prediction, answers) == pytest.approx(want)


def test_soft_accuracy_with_few_answers():
    # n answers: n leave-one-out subsets of n - 1, so few humans cap the score.
    assert vqa.soft_accuracy("cat", ["cat", "cat"]) == pytest.approx(1 / 3)
    assert vqa.soft_accuracy("cat", ["cat", "cat", "cat"]) == pytest.approx(2 / 3)
    assert vqa.soft_accuracy("cat", ["cat"] * 4) == 1.0
    assert vqa.soft_accuracy("cat", ["cat", "dog", "cat"]) == pytest.approx((2 * 1 / 3 + 2 / 3) / 3)
    # One answer: exact match after normalisation.
    assert vqa.soft_accuracy("The cat!", ["cat"]) == 1.0
    assert vqa.soft_accuracy("cats", ["cat"]) == 0.0
    assert vqa.soft_accuracy("cat", []) == 0.0


def test_soft_accuracy_normalises_both_sides_and_never_credits_empty():
    assert vqa.soft_accuracy("2", ["Two", "two.", "2", "3"]) == pytest.approx(
        _official_loop("2", ["2", "2", "2", "3"])
    )
    # "the" normalises to "", as does "a": an empty prediction is wrong whatever humans said.
    assert vqa.soft_accuracy("a", ["the"] * 10) == 0.0
    assert vqa.soft_accuracy("", ["the"] * 10) == 0.0
    assert vqa.soft_accuracy(None, ["yes"] * 10) == 0.0


def test_split_answers():
    assert vqa.split_answers(b"yes\nyes\nno") == ["yes", "yes", "no"]
    assert vqa.split_answers("dark red\nred") == ["dark red", "red"]
    assert vqa.split_answers(b"") == []


def test_answer_vocabulary_counts_normalised_answers_with_alphabetical_ties():
    answer_lists = [
        ["yes", "Yes", "yes!", "no"],  # yes x3
        b"2\nTwo\nthe",  # 2 x2; "the" is empty and not counted
        ["no", "cat", "bat"],  # no x2, cat x1, bat x1
    ]
    assert vqa.answer_vocabulary(answer_lists, 3) == ("yes", "2", "no")
    assert vqa.answer_vocabulary(answer_lists, 5) == ("yes", "2", "no", "bat", "cat")
    assert vqa.answer_vocabulary(answer_lists, 100) == ("yes", "2", "no", "bat", "cat")
    assert vqa.answer_vocabulary(answer_lists[::-1], 5) == ("yes", "2", "no", "bat", "cat")
    with pytest.raises(ValueError, match="size must be positive"):
        vqa.answer_vocabulary(answer_lists, 0)


def test_answer_targets_are_each_answers_soft_accuracy():
    vocabulary = ("yes", "no", "2", "cat")
    answers = ["yes"] * 3 + ["no"] * 2 + ["maybe"] * 5
    targets = vqa.answer_targets(answers, vocabulary)
    assert targets.dtype == np.float32 and targets.shape == (4,)
    np.testing.assert_allclose(targets, [0.9, 0.6, 0.0, 0.0], rtol=1e-6)
    joined = vqa.answer_targets(b"Two\n2\n2\n2\nthe cat", vocabulary)
    np.testing.assert_allclose(joined, [0, 0, 1.0, 1 / 3 * 4 / 5], rtol=1e-6)
    assert not vqa.answer_targets(["unseen"] * 10, vocabulary).any()


def test_vqa_metrics_by_type_and_heldout():
    ten = ["yes"] * 3 + ["no"] * 7  # "yes" scores 0.9, "no" 1.0
    predictions = ["yes", "no", "2", "", None, "cat"]
    answers = [ten, ten, "2\n2\n2\n2", ["dog"], ["dog"], b"cat"]
    types = ["yes/no", "Yes/No", "how many", "what", "", b"what"]
    heldout = [False, False, True, False, False, True]
    metrics = vqa.vqa_metrics(predictions, answers, types, heldout)
    # Scores: 0.9, 1.0, 1.0 (4 agreeing of 4), 0, 0, 1.0.
    assert metrics == pytest.approx(
        {
            "vqa/accuracy": 3.9 / 6,
            "vqa/accuracy_yes_no": 0.95,
            "vqa/accuracy_how_many": 1.0,
            "vqa/accuracy_what": 0.5,
            "vqa/heldout_accuracy": 1.0,
            "vqa/seen_accuracy": 1.9 / 4,
        }
    )
    assert vqa.vqa_metrics(["yes"], [ten]) == pytest.approx({"vqa/accuracy": 0.9})
    assert "vqa/heldout_accuracy" not in vqa.vqa_metrics(["yes"], [ten], [""], [False])
    with pytest.raises(ValueError, match="2 predictions but 1 human_answers"):
        vqa.vqa_metrics(["yes", "no"], [ten])
    with pytest.raises(ValueError, match="no questions"):
        vqa.vqa_metrics([], [])
