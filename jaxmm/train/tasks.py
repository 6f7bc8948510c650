"""The kinds of run the trainer knows, built from a config (`config.task`): contrastive
image-text pretraining (`'contrastive'`, CLIP/SigLIP) and image classification
(`'classification'`), defined here, and the cross-modal tasks of their own modules: visual
question answering (`'vqa'`) and image + text classification (`'image_text_classification'`).

A task bundles what differs between them: the model, the objective the jitted step
optimises, how one training example is made, the inputs `model.init` traces, and the
evaluation. Everything else (state, sharding, checkpoints, the loop) is shared.
"""

from __future__ import annotations

import math
import pathlib
from functools import partial
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxmm.data import image_ops, pipeline, sampling
from jaxmm.evaluate.classification import evaluate_classifier
from jaxmm.evaluate.image_text import embed_images, embed_texts, evaluate_image_text
from jaxmm.models import create_model
from jaxmm.train import classification_losses, distributed, objectives
from jaxmm.train.caption_task import CaptioningTask
from jaxmm.train.fusion_tasks import ImageTextClassificationTask, VqaTask
from jaxmm.train.steps import make_encoders, make_predict
from jaxmm.train.task_common import (  # noqa: F401  (TOKENIZER_FILE: tasks.TOKENIZER_FILE)
    TOKENIZER_FILE,
    Evaluator,
    build_tokenizer,
    model_overrides,
)


def clip_model_overrides(config: ConfigDict, vocab_size: int) -> tuple[str, dict[str, Any]]:
    """`(registry name, overrides)` of the CLIP model of `config.model`, its text vocabulary
    sized to the tokenizer.

    With `config.loss == "siglip"` the model gets SigLIP's learnable logit bias.
    """
    name, overrides = model_overrides(config.model)
    if config.loss == "siglip":
        # SigLIP's initial temperature and bias (Zhai et al. 2023, section 3.1): the
        # bias keeps the many negative pairs from dominating the first steps.
        overrides.setdefault("init_logit_scale", math.log(10.0))
        overrides.setdefault("init_logit_bias", -10.0)
    overrides["text"] = {**overrides.get("text", {}), "vocab_size": vocab_size}
    return name, overrides


class ContrastiveTask:
    """CLIP-style pretraining on an image-text dataset; zero-shot and retrieval evaluation."""

    def __init__(self, config: ConfigDict, builder: tfds.core.DatasetBuilder, workdir):
        self.config, self.builder = config, builder
        # Process 0 trains and saves the tokenizer; the others then load its file.
        self.tokenizer = distributed.first_process_then_others(
            "tokenizer", lambda: build_tokenizer(config.tokenizer, builder, pathlib.Path(workdir))
        )
        # The overrides also rebuild this model to convert a PyTorch `init_from` checkpoint.
        self.model_name, self.model_overrides = clip_model_overrides(
            config, self.tokenizer.vocab_size
        )
        self.model = create_model(self.model_name, **self.model_overrides)
        self.objective = objectives.Contrastive(
            config.loss, config.loss_impl, config.loss_chunk_size
        )
        self.example_fn = partial(
            pipeline.image_text_example, tokenizer=self.tokenizer, config=config.data
        )

    def init_inputs(self) -> tuple[np.ndarray, ...]:
        size = self.config.data.image_size
        return (
            np.zeros((1, size, size, 3), np.float32),
            np.zeros((1, self.config.data.context_length), np.int32),
        )

    def evaluator(self, mesh: Mesh) -> Evaluator:
        encode_image, encode_text = make_encoders(self.model, mesh)
        eval_config = self.config.eval

        def evaluate(variables: Any) -> dict[str, float]:
            source = self.builder.as_data_source(eval_config.split)
            metrics = evaluate_image_text(
                lambda images: encode_image(variables, images),
                lambda tokens: encode_text(variables, tokens),
                self.tokenizer,
                source,
                self.config.data,
                class_names=pipeline.class_names(self.builder),
                templates=eval_config.templates,
                batch_size=eval_config.batch_size,
                mesh=mesh,
            )
            if count := eval_config.get("projector_samples", 0):
                self.projector_points = projector_points(
                    lambda images: encode_image(variables, images),
                    lambda tokens: encode_text(variables, tokens),
                    self.tokenizer,
                    [source[i] for i in range(min(count, len(source)))],
                    self.config.data,
                    eval_config.batch_size,
                )
            return metrics

        return evaluate

    def eval_projector(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None:
        """The last evaluation's sample for TensorBoard's embedding projector, when the config
        asks for one (`eval.projector_samples`)."""
        return getattr(self, "projector_points", None)


PROJECTOR_THUMBNAIL = 64  # pixels a side in the projector's sprite


def projector_points(encode_image, encode_text, tokenizer, records, data_config, batch_size):
    """`(image embeddings, caption embeddings, thumbnails, captions)` of `records` (each image
    with its first caption) for `jaxmm.evaluate.projector.write_projector`."""
    captions = [pipeline.as_text(record["captions"][0]) for record in records]
    tokens = tokenizer(captions, context_length=data_config.context_length)
    thumbnails = np.stack(
        [
            image_ops.crop_resize(
                record["image"],
                image_ops.center_crop_box(*record["image"].shape[:2], 1.0),
                PROJECTOR_THUMBNAIL,
            )
            for record in records
        ]
    )
    return (
        embed_images(encode_image, records, data_config, batch_size),
        embed_texts(encode_text, tokens, batch_size),
        thumbnails,
        captions,
    )


def dataset_num_classes(builder: tfds.core.DatasetBuilder, label_key: str) -> int:
    """The class count of the dataset's `label_key` feature."""
    features = builder.info.features
    if label_key not in features or not hasattr(features[label_key], "num_classes"):
        names = sorted(features.keys())
        raise ValueError(
            f"dataset {builder.name!r} has no class feature {label_key!r} "
            f"(data.label_key); its features: {names}"
        )
    return int(features[label_key].num_classes)


def _example_loss(
    config: ConfigDict, builder: tfds.core.DatasetBuilder, num_classes: int
) -> classification_losses.ExampleLoss:
    """The per-example loss of `config.classification_loss`, the class counts read from the
    training split (labels only, no image decoded) when the loss needs them."""
    loss_config = config.get("classification_loss")
    counts = None
    if classification_losses.needs_class_counts(loss_config):
        source = builder.as_data_source(config.data.get("train_split", "train"))
        labels = sampling.split_labels(source, config.data.get("label_key", "label"))
        counts = sampling.class_counts(labels, num_classes)
    return classification_losses.make_example_loss(
        loss_config, config.get("label_smoothing", 0.0), counts
    )


class ClassificationTask:
    """Supervised classification on an image-label dataset; top-1/top-5 evaluation.

    The classifier is sized to the dataset's class count; a `model.num_classes` that
    disagrees with the data is an error rather than a silently wrong head.
    """

    def __init__(self, config: ConfigDict, builder: tfds.core.DatasetBuilder, workdir):
        del workdir  # nothing to persist beyond the checkpoints
        self.config, self.builder = config, builder
        label_key = config.data.label_key
        num_classes = dataset_num_classes(builder, label_key)
        name, overrides = model_overrides(config.model)
        if overrides.setdefault("num_classes", num_classes) != num_classes:
            raise ValueError(
                f"model.num_classes={overrides['num_classes']} but the dataset's "
                f"{label_key!r} feature has {num_classes} classes"
            )
        self.model_name, self.model_overrides = name, overrides
        self.model = create_model(name, **overrides)
        self.objective = objectives.Classification(
            config.get("label_smoothing", 0.0),
            example_loss=_example_loss(config, builder, num_classes),
        )
        self.example_fn = partial(pipeline.image_label_example, config=config.data)

    def init_inputs(self) -> tuple[np.ndarray, ...]:
        size = self.config.data.image_size
        return (np.zeros((1, size, size, 3), np.float32),)

    def evaluator(self, mesh: Mesh) -> Evaluator:
        predict = make_predict(self.model, mesh)
        eval_config = self.config.eval

        def evaluate(variables: Any) -> dict[str, float]:
            return evaluate_classifier(
                lambda images: predict(variables, images),
                self.builder.as_data_source(eval_config.split),
                self.config.data,
                eval_config.batch_size,
            )

        return evaluate


TASKS = {
    "contrastive": ContrastiveTask,
    "classification": ClassificationTask,
    "vqa": VqaTask,
    "image_text_classification": ImageTextClassificationTask,
    "captioning": CaptioningTask,
}


def make_task(config: ConfigDict, builder: tfds.core.DatasetBuilder, workdir):
    """The task named by `config.task` (`'contrastive'` when absent)."""
    name = config.get("task", "contrastive")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](config, builder, workdir)
