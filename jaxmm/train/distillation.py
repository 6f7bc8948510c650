"""Knowledge distillation: a frozen teacher inside the student's jitted step (`config.distill`).

The teacher's weights come from a jaxmm run folder, a PyTorch checkpoint or a weights tag
(`distill.teacher`, read as `init_from` reads them: `jaxmm.train.pretrained`). Its model is
the run folder's own (its `config.json`) unless `distill.teacher_model` names one, which a
PyTorch checkpoint needs (a `MODEL@TAG` tag names its model itself). It is built as a task
of the student's kind, on the student's data, and must take the student's inputs: the same
images, and for CLIP the same tokens (a teacher run's tokenizer is copied into the student's
workdir before the student builds its own, so both read the same ids).

Each step the teacher runs on the student's batch in inference mode (BatchNorm's running
statistics, no dropout), inside the same jitted function as the student's forward and
backward pass; its outputs enter the student's loss as constants (`batch['teacher']`). Its
variables are an argument of the step, laid out by the same sharding rules as the student's
parameters; they get no optimizer state and are not checkpointed (a resumed run loads them
again).

The student's objective gets a distillation term, mixed as `(1 - weight) * task loss +
weight * distillation`:
- classifiers (`LogitDistillation`): the temperature-softened KL of Hinton et al. 2015,
  `losses.distillation_kl`;
- CLIP (`SimilarityDistillation`): the KL of each row and column of the student's `[N, N]`
  image-text logits against the teacher's, `losses.clip_similarity_distillation_loss`, plus
  `embedding_weight` times the cosine distance of the student's embeddings to the teacher's
  (CLIP-KD's feature distillation; the embedding widths must match).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxmm import losses, sharding, weights
from jaxmm.models.clip import CLIPOutput
from jaxmm.train import objectives, tasks
from jaxmm.train.pretrained import load_variables, merge_pretrained
from jaxmm.train.task_common import TOKENIZER_FILE, inherited_tokenizer, run_folder

Batch = dict[str, jax.Array]


def enabled(config: ConfigDict) -> bool:
    """Whether the config distils from a teacher (`distill.teacher` set)."""
    return bool(config.get("distill", {}).get("teacher", ""))


def _mix(task_loss: jax.Array, distill_loss: jax.Array, weight: float) -> jax.Array:
    return (1.0 - weight) * task_loss + weight * distill_loss


def _check_weight(name: str, value: float, upper: float | None = 1.0) -> float:
    if value < 0 or (upper is not None and value > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"distill.{name} must be {bound}, got {value}")
    return float(value)


class LogitDistillation:
    """A classifier's objective plus the KL of its softened logits to the teacher's.

    Works for any objective whose outputs are `[B, C]` class logits averaged over examples
    (`objectives.Classification`: image or image + text classifiers, with MixUp/CutMix too:
    the teacher sees the same mixed image).
    """

    def __init__(self, student: objectives.Classification, weight: float, temperature: float):
        self.student = student
        self.weight = _check_weight("weight", weight)
        if temperature <= 0:
            raise ValueError(f"distill.temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        return self.student.inputs(batch)

    @staticmethod
    def teacher_targets(outputs: jax.Array) -> jax.Array:
        """What the loss reads from the teacher's outputs: its logits."""
        return outputs

    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        task_loss, metrics = self.student.loss(outputs, batch)
        distill_loss = jnp.mean(losses.distillation_kl(outputs, batch["teacher"], self.temperature))
        return _mix(task_loss, distill_loss, self.weight), {
            **metrics,
            "task_loss": task_loss,
            "distill_loss": distill_loss,
        }

    def loss_weight(self, batch: Batch) -> jax.Array:
        """The examples, as the student's loss (the distillation term is a per-example mean)."""
        return self.student.loss_weight(batch)

    def constrain(self, params: Any) -> Any:
        return self.student.constrain(params)


class SimilarityDistillation:
    """A CLIP's contrastive objective plus the KL of its image-text logits to the teacher's,
    and optionally the cosine distance of its embeddings to the teacher's.

    The teacher's embeddings come scaled by `exp(teacher logit_scale / 2)` each, so their dot
    products are the teacher's logits and every target has a batch axis (gradient
    accumulation splits the batch). Without `loss_weight` it accumulates through cached
    outputs, over all N examples, like the contrastive loss itself.
    """

    def __init__(
        self,
        student: objectives.Contrastive,
        weight: float,
        temperature: float,
        embedding_weight: float = 0.0,
    ):
        if student.blocks is not None:
            raise ValueError(
                "distillation builds the global [N, N] logits of teacher and student: use "
                "loss_impl='global' with distill.teacher"
            )
        self.student = student
        self.weight = _check_weight("weight", weight)
        self.embedding_weight = _check_weight("embedding_weight", embedding_weight, upper=None)
        if temperature <= 0:
            raise ValueError(f"distill.temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
        return self.student.inputs(batch)

    @staticmethod
    def teacher_targets(outputs: CLIPOutput) -> dict[str, jax.Array]:
        """The teacher's embeddings, each scaled by the square root of its logit scale."""
        root_scale = jnp.exp(0.5 * outputs.logit_scale.astype(jnp.float32))
        return {
            "image_embeddings": outputs.image_embeddings.astype(jnp.float32) * root_scale,
            "text_embeddings": outputs.text_embeddings.astype(jnp.float32) * root_scale,
        }

    def loss(self, outputs: CLIPOutput, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        task_loss, metrics = self.student.loss(outputs, batch)
        teacher = batch["teacher"]
        distill_loss = losses.clip_similarity_distillation_loss(
            outputs.image_embeddings,
            outputs.text_embeddings,
            outputs.logit_scale,
            teacher["image_embeddings"],
            teacher["text_embeddings"],
            0.0,  # the teacher's scale is in its embeddings
            self.temperature,
        )
        loss = _mix(task_loss, distill_loss, self.weight)
        metrics = {**metrics, "task_loss": task_loss, "distill_loss": distill_loss}
        if self.embedding_weight:
            embedding_loss = 0.5 * (
                losses.embedding_distillation_loss(
                    outputs.image_embeddings, teacher["image_embeddings"]
                )
                + losses.embedding_distillation_loss(
                    outputs.text_embeddings, teacher["text_embeddings"]
                )
            )
            loss += self.embedding_weight * embedding_loss
            metrics["embedding_distill_loss"] = embedding_loss
        return loss, metrics

    def constrain(self, params: Any) -> Any:
        return self.student.constrain(params)


def distillation_objective(objective: Any, distill: ConfigDict) -> Any:
    """The student's `objective` with the distillation term `distill` asks for."""
    weight, temperature = distill.get("weight", 0.5), distill.get("temperature", 1.0)
    embedding_weight = distill.get("embedding_weight", 0.0)
    if isinstance(objective, objectives.Contrastive):
        return SimilarityDistillation(objective, weight, temperature, embedding_weight)
    if isinstance(objective, objectives.Classification):
        if embedding_weight:
            raise ValueError("distill.embedding_weight is for CLIP students; set it to 0")
        return LogitDistillation(objective, weight, temperature)
    raise ValueError(
        f"distill.teacher: {type(objective).__name__} objectives have no distillation; "
        "classification and contrastive runs have"
    )


@dataclasses.dataclass(frozen=True)
class Distiller:
    """What the trainer needs to distil: the objective to optimise, the teacher's part of the
    step and its variables on the devices."""

    objective: Any
    # `(teacher variables, batch) -> targets`: the teacher's forward pass in inference mode,
    # traced inside the train step; the objective reads the targets as `batch['teacher']`.
    targets: Callable[[Any, Batch], Any]
    variables: Any
    shardings: Any


def inherit_teacher_tokenizer(config: ConfigDict, workdir: pathlib.Path) -> None:
    """Copies a teacher run's tokenizer into the student's `workdir` (unless it has one):
    call before the student's task is built, so that both read the same token ids."""
    if enabled(config):
        inherited_tokenizer(config.distill.teacher, workdir)


def _teacher_config(config: ConfigDict, workdir: pathlib.Path) -> tuple[ConfigDict, pathlib.Path]:
    """`(config, workdir)` the teacher's task is built from: a teacher run's own, or the
    student's with `distill.teacher_model` as the model."""
    spec = config.distill.teacher
    path = pathlib.Path(spec).expanduser()
    model = config.distill.get("teacher_model", {})
    model = model.to_dict() if isinstance(model, ConfigDict) else dict(model)
    if not model.get("name"):  # the default section: no model named
        model = {}
    if not path.exists() and weights.resolve(spec, model.get("name")) is None:
        raise FileNotFoundError(
            f"distill.teacher {spec} does not exist (expected a jaxmm run folder, a PyTorch "
            "checkpoint or a MODEL@TAG weights tag)"
        )
    run = run_folder(path) if path.is_dir() else None
    if run is not None:
        teacher = ConfigDict(json.loads((run / "config.json").read_text()))
        if teacher.get("task", "contrastive") != config.get("task", "contrastive"):
            raise ValueError(
                f"distill.teacher {run} is a {teacher.get('task', 'contrastive')!r} run; the "
                f"student is a {config.get('task', 'contrastive')!r} run"
            )
        if "tokenizer" in teacher and not (run / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(f"distill.teacher {run} has no {TOKENIZER_FILE}")
        if model:
            teacher.model = model
        return teacher, run
    if not model:
        entry = weights.resolve(spec)
        if entry is None:
            raise ValueError(
                f"distill.teacher {spec!r} is neither a jaxmm run folder nor a MODEL@TAG "
                "weights tag: set distill.teacher_model to the teacher's model section "
                "(name and overrides)"
            )
        model = {"name": entry.model}
    teacher = ConfigDict(config.to_dict())
    teacher.model, teacher.init_from = model, ""
    return teacher, workdir


def load_teacher(
    config: ConfigDict, builder: Any, workdir: pathlib.Path, student: Any, mesh: Mesh, rules: Any
) -> Distiller:
    """The teacher of `config.distill` for the `student` task, its variables on `mesh`.

    Raises:
        ValueError, FileNotFoundError: a teacher that cannot be found, whose model does not
            take the student's inputs, or whose weights do not fit its model, each named.
    """
    spec = config.distill.teacher
    teacher_config, teacher_workdir = _teacher_config(config, workdir)
    try:
        teacher = tasks.make_task(teacher_config, builder, teacher_workdir)
    except ValueError as error:  # a class count or vocabulary that does not fit, say
        raise ValueError(f"distill.teacher {spec}: {error}") from None
    student_tokenizer = getattr(student, "tokenizer", None)
    if student_tokenizer is not None and (
        student_tokenizer.vocab_size != teacher.tokenizer.vocab_size
    ):
        raise ValueError(
            f"distill.teacher {spec}: its tokenizer has {teacher.tokenizer.vocab_size} tokens, "
            f"the student's {student_tokenizer.vocab_size}; both must read the same ids"
        )
    inputs = student.init_inputs()
    try:
        shapes = jax.eval_shape(teacher.model.init, jax.random.PRNGKey(0), *inputs)
    except (TypeError, ValueError) as error:
        shown = ", ".join(str(x.shape) for x in inputs)
        raise ValueError(
            f"distill.teacher {spec}: the teacher {teacher.model_name} cannot take the "
            f"student's inputs ({shown}): {error}"
        ) from None
    variables = merge_pretrained(
        shapes, load_variables(spec, teacher), set(), spec, field="distill.teacher"
    )
    shardings = sharding.logical_sharding(shapes, mesh, rules)
    variables = jax.device_put(variables, nn.unbox(shardings))
    objective = distillation_objective(student.objective, config.distill)

    def targets(teacher_variables: Any, batch: Batch) -> Any:
        outputs = teacher.model.apply(
            teacher_variables, *teacher.objective.inputs(batch), train=False
        )
        return jax.lax.stop_gradient(objective.teacher_targets(outputs))

    return Distiller(objective, targets, variables, nn.unbox(shardings))
