"""Tasks that classify an image together with a text: visual question answering
(`task='vqa'`) and image + text classification (`task='image_text_classification'`).

Both train a fusion model (`jaxmm.models.fusion`: concatenation, bilinear pooling or
cross-attention over an image tower and the text tower) with the one trainer. The towers
can start from a CLIP run or converted OpenAI CLIP weights (`init_from`): only the
`image_tower` and `text_tower` subtrees are loaded (`pretrained_subtrees`, chosen by
`init_towers`), and with the text tower a CLIP run's tokenizer comes along, since that tower
only understands its vocabulary.
"""

from __future__ import annotations

import pathlib
from functools import partial
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxmm.data import pipeline, vqa_shapes
from jaxmm.data.tokenizer import Tokenizer
from jaxmm.evaluate.classification import classification_metrics
from jaxmm.evaluate.question_answering import evaluate_vqa
from jaxmm.evaluate.vqa import answer_targets, answer_vocabulary, split_answers
from jaxmm.models import create_model
from jaxmm.train import distributed, objectives
from jaxmm.train.steps import make_predict
from jaxmm.train.task_common import (
    Evaluator,
    build_tokenizer,
    inherited_tokenizer,
    model_overrides,
)

ANSWERS_FILE = "answers.txt"
TOWERS = ("image_tower", "text_tower")


class FusionTask:
    """What VQA and image + text classification share: the tokenizer, the fusion model with
    its text vocabulary and class count, and inputs `(images, tokens)`."""

    text_key = "text"  # the feature the BPE tokenizer learns from

    def __init__(self, config: ConfigDict, builder: tfds.core.DatasetBuilder, workdir):
        self.config, self.builder = config, builder
        workdir = pathlib.Path(workdir)
        # What `init_from` loads: the towers (`init_towers`, both by default); the fusion
        # layers and the classifier start fresh.
        self.pretrained_subtrees = tuple(config.get("init_towers", TOWERS))
        if not self.pretrained_subtrees or set(self.pretrained_subtrees) - set(TOWERS):
            raise ValueError(
                f"init_towers={self.pretrained_subtrees}: name one or both of {TOWERS}"
            )

        def tokenizer() -> Tokenizer:
            # A CLIP's text tower only understands its own tokenizer's ids.
            if "text_tower" in self.pretrained_subtrees:
                inherited_tokenizer(config.get("init_from", ""), workdir)
            return build_tokenizer(config.tokenizer, builder, workdir, self.text_key)

        self.tokenizer = distributed.first_process_then_others("tokenizer", tokenizer)
        self.classes = self.class_names(workdir)
        name, overrides = model_overrides(config.model)
        overrides["num_classes"] = len(self.classes)
        overrides["text"] = {**overrides.get("text", {}), "vocab_size": self.tokenizer.vocab_size}
        self.model_name, self.model_overrides = name, overrides
        self.model = create_model(name, **overrides)

    def class_names(self, workdir: pathlib.Path) -> tuple[str, ...]:
        raise NotImplementedError

    def init_inputs(self) -> tuple[np.ndarray, ...]:
        size = self.config.data.image_size
        return (
            np.zeros((1, size, size, 3), np.float32),
            np.zeros((1, self.config.data.context_length), np.int32),
        )

    def tokens(self, text: str | bytes) -> np.ndarray:
        context = self.config.data.context_length
        return self.tokenizer(pipeline.as_text(text), context_length=context)[0]


def vqa_answer_vocabulary(builder: tfds.core.DatasetBuilder, size: int) -> tuple[str, ...]:
    """The built-in dataset's fixed answers; for user data the `size` most frequent
    normalised answers of the train split."""
    if isinstance(builder, vqa_shapes.VqaShapes):
        return vqa_shapes.answer_vocabulary(builder.builder_config)
    source = builder.as_data_source("train")
    answers = (split_answers(field) for i in range(len(source)) for field in source[i]["answers"])
    return answer_vocabulary(answers, size)


def vqa_example(
    example: dict[str, Any], rng: np.random.Generator, *, task: VqaTask
) -> dict[str, np.ndarray]:
    """One training example: the image and `data.questions_per_image` of its questions drawn
    at random without repeats, with the soft scores of every vocabulary answer.

    With more than one question the model encodes the image once and answers all of them
    (`tokens` `[Q, L]`, `targets` `[Q, V]`); an image with fewer questions is padded with
    empty ones whose all-zero targets carry no loss.
    """
    # The image draws from `rng` first, as every example function does.
    image = pipeline.augment_image(example["image"], rng, task.config.data)
    count = task.config.data.get("questions_per_image", 1)
    chosen = rng.permutation(len(example["questions"]))[:count]

    def question(index: int) -> tuple[np.ndarray, np.ndarray]:
        answers = split_answers(example["answers"][index])
        return task.tokens(example["questions"][index]), answer_targets(answers, task.classes)

    tokens, targets = zip(*(question(i) for i in chosen), strict=True)
    if count == 1:
        return {"image": image, "tokens": tokens[0], "targets": targets[0]}
    padding = count - len(chosen)
    return {
        "image": image,
        "tokens": np.stack(tokens + (np.zeros_like(tokens[0]),) * padding),
        "targets": np.stack(targets + (np.zeros_like(targets[0]),) * padding),
    }


class VqaTask(FusionTask):
    """Visual question answering as classification over an answer vocabulary, scored with
    VQA-v2's soft accuracy per question type and on held-out attribute combinations."""

    text_key = "questions"

    def __init__(self, config: ConfigDict, builder: tfds.core.DatasetBuilder, workdir):
        super().__init__(config, builder, workdir)
        self.objective = objectives.SoftTargetClassification()
        self.example_fn = partial(vqa_example, task=self)
        self.last_predictions: dict[str, list] | None = None  # of the last evaluation

    def class_names(self, workdir: pathlib.Path) -> tuple[str, ...]:
        """The answer vocabulary, saved with the run so a resumed or evaluated run keeps it."""
        path = workdir / ANSWERS_FILE
        if path.exists():
            return tuple(path.read_text(encoding="utf-8").splitlines())
        vocabulary = vqa_answer_vocabulary(self.builder, self.config.data.get("num_answers", 1000))
        if not vocabulary:
            raise ValueError("the train split has no answers to build the answer vocabulary from")

        def save() -> None:
            workdir.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")

        distributed.first_process_then_others("answers", save)
        return vocabulary

    def evaluator(self, mesh: Mesh) -> Evaluator:
        predict = make_predict(self.model, mesh)
        eval_config = self.config.eval

        def evaluate(variables: Any) -> dict[str, float]:
            metrics, self.last_predictions = evaluate_vqa(
                lambda inputs: predict(variables, inputs),
                self.tokenizer,
                self.builder.as_data_source(eval_config.split),
                self.config.data,
                self.classes,
                eval_config.batch_size,
            )
            return metrics

        return evaluate

    def eval_samples(self, count: int = 8) -> list[tuple[np.ndarray, str]]:
        """The last evaluation's first question of each of `count` images: the image and
        "question / predicted / true answers", for TensorBoard."""
        flat = self.last_predictions
        if not flat:
            return []
        source = self.builder.as_data_source(self.config.eval.split)
        images = flat["image_index"]
        # Questions of one image are consecutive: take the first of each.
        firsts = [q for q in range(len(images)) if q == 0 or images[q - 1] != images[q]]
        samples = []
        for q in firsts[:count]:
            answers = ", ".join(flat["answers"][q])
            text = (
                f"Q: {flat['question'][q]}  \npredicted: {flat['prediction'][q]}  \ntrue: {answers}"
            )
            samples.append((np.asarray(source[images[q]]["image"]), text))
        return samples


def image_text_example(
    example: dict[str, Any], rng: np.random.Generator, *, task: ImageTextClassificationTask
) -> dict[str, np.ndarray]:
    """One training example: the augmented image, its text and its label."""
    return {
        "image": pipeline.augment_image(example["image"], rng, task.config.data),
        "tokens": task.tokens(example["text"]),
        "label": np.int32(example[task.config.data.label_key]),
    }


class ImageTextClassificationTask(FusionTask):
    """Classifies an example from its image and its text together (a product photo with its
    description, a scan with its clinical note); top-1/top-5 like image classification."""

    def __init__(self, config: ConfigDict, builder: tfds.core.DatasetBuilder, workdir):
        super().__init__(config, builder, workdir)
        self.objective = objectives.Classification(
            config.get("label_smoothing", 0.0), input_keys=("image", "tokens")
        )
        self.example_fn = partial(image_text_example, task=self)

    def class_names(self, workdir: pathlib.Path) -> tuple[str, ...]:
        del workdir  # the classes are the dataset's
        label_key = self.config.data.label_key
        names = pipeline.class_names(self.builder, label_key)
        if names is None:
            raise ValueError(f"dataset {self.builder.name!r} has no class feature {label_key!r}")
        return tuple(names)

    def evaluator(self, mesh: Mesh) -> Evaluator:
        predict = make_predict(self.model, mesh)
        eval_config, data_config = self.config.eval, self.config.data

        def evaluate(variables: Any) -> dict[str, float]:
            source = self.builder.as_data_source(eval_config.split)
            annotations = pipeline.split_annotations(source, data_config.label_key)
            logits = []
            size = eval_config.batch_size
            for start in range(0, len(source), size):
                records = [source[i] for i in range(start, min(start + size, len(source)))]
                valid = len(records)
                records += [records[-1]] * (size - valid)  # one shape: one compile
                images = np.stack([pipeline.eval_image(r["image"], data_config) for r in records])
                tokens = np.stack([self.tokens(r["text"]) for r in records])
                logits.append(np.asarray(predict(variables, (images, tokens)))[:valid])
            return classification_metrics(
                np.concatenate(logits), annotations["labels"], annotations["heldout"]
            )

        return evaluate
