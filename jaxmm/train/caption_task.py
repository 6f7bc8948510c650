"""Image captioning as a task of the one trainer (`task='captioning'`).

The model is a `jaxmm.models.captioner.Captioner` (an image tower's tokens read by a causal
decoder) trained with teacher forcing: each training example is an augmented image and one
of its captions drawn at random, tokenised to `data.context_length` tokens (SOT ... EOT,
padding); the decoder reads `tokens[:-1]` and predicts `tokens[1:]` (`objectives.Captioning`:
cross-entropy with label smoothing, padding ignored).

Evaluation generates a caption for every image of `eval.split` (`jaxmm.generate`: greedy
search, or beam search with `eval.beam_size > 1`) and scores them against the split's
captions with the COCO caption metrics (`jaxmm.evaluate.captioning`): `caption/bleu1` ..
`caption/bleu4`, `caption/rouge_l`, `caption/cider` (CIDEr-D), `caption/meteor` with
`eval.meteor`; on datasets whose images carry `colour` and `shape` classes (the built-in
`clip_shapes`), `caption/attribute_accuracy`, and with a `heldout` flag
`caption/heldout_attribute_accuracy` on the colour-shape pairs held out of training.

`init_from` loads only the `image_tower` subtree (`pretrained_subtrees`): a CLIP run of the
same image tower (`configs/clip_small.py` for `captioner_small`) or OpenAI's weights by tag
(`clip_vit_b32@openai` for `captioner_clip_vit_b32`); the decoder starts fresh.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxmm.data import pipeline
from jaxmm.data.tokenizer import Tokenizer
from jaxmm.evaluate import captioning
from jaxmm.generate import make_generate
from jaxmm.models import create_model
from jaxmm.train import distributed, objectives
from jaxmm.train.steps import _jit_over_batch
from jaxmm.train.task_common import Evaluator, build_tokenizer, model_overrides


def captioner_overrides(config: ConfigDict, vocab_size: int) -> tuple[str, dict[str, Any]]:
    """`(registry name, overrides)` of the config's captioner: its decoder sized to the
    tokenizer's vocabulary and to `data.context_length` positions."""
    name, overrides = model_overrides(config.model)
    overrides["decoder"] = {
        **overrides.get("decoder", {}),
        "vocab_size": vocab_size,
        "max_length": config.data.context_length,
    }
    return name, overrides


def caption_example(
    example: dict[str, Any], rng: np.random.Generator, *, tokenizer: Tokenizer, config: ConfigDict
) -> dict[str, np.ndarray]:
    """One training example: the augmented image, and one random caption as decoder inputs
    `tokens` (SOT first) and `targets` (the same shifted by one; both `context_length - 1`)."""
    image = pipeline.augment_image(example["image"], rng, config)  # draws first, as CLIP's
    captions = example["captions"]
    caption = pipeline.as_text(captions[rng.integers(len(captions))])
    tokens = tokenizer(caption, context_length=config.context_length)[0]
    return {"image": image, "tokens": tokens[:-1], "targets": tokens[1:]}


class _Head(Sequence):
    """The first `length` records of a data source."""

    def __init__(self, source: Sequence, length: int):
        self.source, self.length = source, min(length, len(source)) if length else len(source)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.source[index]


class CaptioningTask:
    """Captioning on an image-caption dataset; COCO caption metrics on generated captions."""

    # What `init_from` loads: the image tower; the projection and the decoder start fresh.
    pretrained_subtrees = ("image_tower",)

    def __init__(self, config: ConfigDict, builder: tfds.core.DatasetBuilder, workdir):
        self.config, self.builder = config, builder
        workdir = pathlib.Path(workdir)
        self.tokenizer = distributed.first_process_then_others(
            "tokenizer", lambda: build_tokenizer(config.tokenizer, builder, workdir)
        )
        self.model_name, self.model_overrides = captioner_overrides(
            config, self.tokenizer.vocab_size
        )
        self.model = create_model(self.model_name, **self.model_overrides)
        self.objective = objectives.Captioning(config.get("label_smoothing", 0.0))
        self.example_fn = partial(caption_example, tokenizer=self.tokenizer, config=config.data)
        self.last_samples: list[tuple[np.ndarray, str]] = []

    def init_inputs(self) -> tuple[np.ndarray, ...]:
        size = self.config.data.image_size
        return (
            np.zeros((1, size, size, 3), np.float32),
            np.zeros((1, self.config.data.context_length - 1), np.int32),
        )

    def generator(self, mesh: Mesh, **settings: Any):
        """Jitted `(variables, images [B, S, S, 3]) -> tokens [B, max_length]` with the batch
        split over the mesh; `settings` as `jaxmm.generate.make_generate` takes them."""
        generate = make_generate(
            self.model, sot_id=self.tokenizer.sot_id, eot_id=self.tokenizer.eot_id, **settings
        )
        key = jax.random.PRNGKey(self.config.seed)
        return _jit_over_batch(lambda variables, images: generate(variables, images, key), mesh)

    def evaluator(self, mesh: Mesh) -> Evaluator:
        eval_config = self.config.eval
        max_length = eval_config.get("max_length", 0) or self.config.data.context_length
        if max_length > self.config.data.context_length:
            raise ValueError(
                f"eval.max_length={max_length} exceeds data.context_length="
                f"{self.config.data.context_length}, the decoder's positions"
            )
        predict = self.generator(
            mesh,
            max_length=max_length,
            beam_size=eval_config.get("beam_size", 1),
            length_penalty=eval_config.get("length_penalty", 0.6),
        )

        def evaluate(variables: Any) -> dict[str, float]:
            source = _Head(
                self.builder.as_data_source(eval_config.split), eval_config.get("num_examples", 0)
            )
            generated = []
            for images, valid in pipeline.eval_batches(
                source, self.config.data, eval_config.batch_size
            ):
                tokens = np.asarray(predict(variables, images))[:valid]
                generated += [self.tokenizer.decode(row) for row in tokens]
            return self.score(source, generated)

        return evaluate

    def score(self, source: Sequence[dict[str, Any]], generated: list[str]) -> dict[str, float]:
        """The `caption/...` metrics of `generated` (one caption per record of `source`)."""
        references = [[pipeline.as_text(c) for c in record["captions"]] for record in source]
        metrics = captioning.caption_scores(
            references, generated, meteor=self.config.eval.get("meteor", False)
        )
        colours = pipeline.class_names(self.builder, "colour")
        shapes = pipeline.class_names(self.builder, "shape")
        if colours and shapes:
            records = [source[i] for i in range(len(source))]
            heldout = [bool(r["heldout"]) for r in records] if "heldout" in records[0] else None
            metrics |= captioning.attribute_accuracy(
                generated,
                [int(r["colour"]) for r in records],
                [int(r["shape"]) for r in records],
                colours,
                shapes,
                heldout,
            )
        self.last_samples = [
            (
                np.asarray(source[i]["image"]),
                f"generated: {generated[i]}  \nreference: {references[i][0]}",
            )
            for i in range(min(8, len(generated)))
        ]
        return {f"caption/{key}": value for key, value in metrics.items()}

    def eval_samples(self) -> list[tuple[np.ndarray, str]]:
        """The last evaluation's first images with their generated and a reference caption."""
        return self.last_samples
