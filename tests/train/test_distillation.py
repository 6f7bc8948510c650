"""Knowledge distillation (`config.distill`): a frozen teacher inside the student's train step.

The step's loss and update are checked against PyTorch autograd on the same numbers; the
teacher's forward pass against torchvision's eval-mode network (so it runs in inference
mode, with the converted weights); accumulation against the unaccumulated step (1e-5);
whole runs from a jaxmm teacher run for a classifier and a CLIP.
"""

import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import traverse_util

import jaxmm.train
from configs import clip_small, distill_clip_small, distill_shapes, resnet18_shapes
from jaxmm import sharding
from jaxmm.data import datasets
from jaxmm.models.clip import CLIPOutput, l2_normalize
from jaxmm.train import distillation, tasks
from jaxmm.train.checkpoint import restore_variables
from jaxmm.train.distillation import LogitDistillation, SimilarityDistillation
from jaxmm.train.objectives import Classification, Contrastive
from jaxmm.train.state import create_train_state
from jaxmm.train.steps import make_train_step

BATCH, CLASSES = 16, 5
TOLERANCE = 1e-5


class Linear(nn.Module):
    """A student whose step PyTorch can redo by hand: logits = x W + b."""

    @nn.compact
    def __call__(self, images, *, train=False):
        return nn.Dense(CLASSES)(images.reshape(images.shape[0], -1))


class BatchNormTeacher(nn.Module):
    """A teacher whose logits differ between training and inference mode."""

    @nn.compact
    def __call__(self, images, *, train=False):
        x = nn.Dense(16)(images.reshape(images.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(CLASSES)(nn.relu(x))


class TinyClip(nn.Module):
    """Two linear towers with CLIP's normalised outputs and learnable temperature."""

    dim: int = 8

    @nn.compact
    def __call__(self, images, tokens, *, train=False):
        image = nn.Dense(self.dim)(images.reshape(images.shape[0], -1))
        text = nn.Dense(self.dim)(nn.Embed(32, 8)(tokens).mean(axis=1))
        scale = self.param("logit_scale", nn.initializers.constant(np.log(10.0)), ())
        return CLIPOutput(l2_normalize(image), l2_normalize(text), scale)


def teacher_variables(teacher, inputs, seed=1):
    variables = nn.unbox(teacher.init(jax.random.PRNGKey(seed), *inputs))
    if "batch_stats" in variables:  # running statistics far from any batch's own
        stats = variables["batch_stats"]["BatchNorm_0"]
        stats = {"mean": stats["mean"] + 0.5, "var": stats["var"] * 3.0}
        variables = {**variables, "batch_stats": {"BatchNorm_0": stats}}
    return variables


def one_step(model, objective, teacher_fn, teacher_vars, batch, k=1, num_devices=1):
    """`(state before, state after, metrics)` of one SGD(1.0) distillation step."""
    tx = optax.sgd(1.0)
    mesh = sharding.make_mesh({"data": num_devices}, jax.devices()[:num_devices])
    inputs = objective.inputs({key: value[:1] for key, value in batch.items()})
    state, shardings = create_train_state(lambda rng: model.init(rng, *inputs), tx, mesh, seed=0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        step = jax.jit(
            make_train_step(
                model,
                tx,
                objective,
                optax.constant_schedule(1.0),
                grad_accum_steps=k,
                teacher=teacher_fn,
            ),
            in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
            out_shardings=(shardings, None),
        )
        batch = jax.device_put(batch, sharding.batch_sharding(mesh))
        new_state, metrics = step(state, batch, teacher_vars)
    return jax.device_get(state), jax.device_get(new_state), jax.device_get(metrics)


def teacher_of(teacher, objective):
    """The teacher part of the step as `load_teacher` builds it, for a module in hand."""

    def targets(variables, batch):
        outputs = teacher.apply(variables, *objective.inputs(batch), train=False)
        return jax.lax.stop_gradient(objective.teacher_targets(outputs))

    return targets


@pytest.fixture(scope="module")
def image_batch():
    rng = np.random.default_rng(0)
    return {
        "image": rng.normal(size=(BATCH, 2, 2, 3)).astype(np.float32),
        "label": rng.integers(0, CLASSES, size=BATCH).astype(np.int32),
    }


def test_the_step_is_the_mixed_loss_of_torch_with_the_teacher_in_inference_mode(image_batch):
    torch = pytest.importorskip("torch", reason="needs torch: pip install 'jaxmm[parity]'")
    F = torch.nn.functional
    weight, temperature = 0.7, 3.0
    teacher = BatchNormTeacher()
    variables = teacher_variables(teacher, (image_batch["image"][:1],))
    objective = LogitDistillation(Classification(), weight, temperature)
    before, after, metrics = one_step(
        Linear(), objective, teacher_of(teacher, objective), variables, image_batch
    )
    # PyTorch redoes the step: the teacher's eval-mode logits as data, the student's by hand.
    teacher_logits = torch.tensor(np.asarray(teacher.apply(variables, image_batch["image"])))
    kernel = torch.tensor(np.asarray(before.params["Dense_0"]["kernel"]), requires_grad=True)
    bias = torch.tensor(np.asarray(before.params["Dense_0"]["bias"]), requires_grad=True)
    logits = torch.from_numpy(image_batch["image"].reshape(BATCH, -1)) @ kernel + bias
    task = F.cross_entropy(logits, torch.from_numpy(image_batch["label"]).long())
    distill = F.kl_div(
        F.log_softmax(logits / temperature, 1),
        F.softmax(teacher_logits / temperature, 1),
        reduction="batchmean",
    ) * (temperature**2)
    loss = (1 - weight) * task + weight * distill
    loss.backward()
    np.testing.assert_allclose(metrics["loss"], loss.item(), rtol=TOLERANCE)
    np.testing.assert_allclose(metrics["task_loss"], task.item(), rtol=TOLERANCE)
    np.testing.assert_allclose(metrics["distill_loss"], distill.item(), rtol=TOLERANCE)
    step = before.params["Dense_0"]["kernel"] - after.params["Dense_0"]["kernel"]  # SGD, lr 1
    np.testing.assert_allclose(step, kernel.grad.numpy(), atol=1e-6)
    # The teacher holds no optimizer state: SGD's state mirrors the student's params only.
    assert set(traverse_util.flatten_dict(after.params)) == {
        ("Dense_0", "kernel"),
        ("Dense_0", "bias"),
    }


def test_logit_distillation_accumulates_like_one_big_batch(image_batch):
    teacher = BatchNormTeacher()
    variables = teacher_variables(teacher, (image_batch["image"][:1],))
    objective = LogitDistillation(Classification(label_smoothing=0.1), 0.5, 2.0)
    fn = teacher_of(teacher, objective)
    _, reference, reference_metrics = one_step(Linear(), objective, fn, variables, image_batch)
    _, accumulated, metrics = one_step(Linear(), objective, fn, variables, image_batch, 4, 8)
    chex.assert_trees_all_close(accumulated.params, reference.params, atol=TOLERANCE)
    for key in ("loss", "distill_loss", "task_loss"):
        np.testing.assert_allclose(metrics[key], reference_metrics[key], rtol=TOLERANCE)


def test_similarity_distillation_accumulates_over_every_pair():
    """Cached outputs (GradCache): the KL of each row and column sees all N captions."""
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.normal(size=(BATCH, 2, 2, 3)).astype(np.float32),
        "tokens": rng.integers(0, 32, size=(BATCH, 6)).astype(np.int32),
    }
    teacher = TinyClip(dim=16)
    variables = teacher_variables(teacher, (batch["image"][:1], batch["tokens"][:1]))
    objective = SimilarityDistillation(Contrastive("infonce"), 0.5, 2.0, embedding_weight=0.0)
    fn = teacher_of(teacher, objective)
    _, reference, reference_metrics = one_step(TinyClip(), objective, fn, variables, batch)
    _, accumulated, metrics = one_step(TinyClip(), objective, fn, variables, batch, 4, 8)
    chex.assert_trees_all_close(accumulated.params, reference.params, atol=TOLERANCE)
    for key in ("loss", "distill_loss", "task_loss"):
        np.testing.assert_allclose(metrics[key], reference_metrics[key], rtol=TOLERANCE)
    # The distillation term is the teacher's own logits' KL: zero for the teacher itself.
    outputs = teacher.apply(variables, batch["image"], batch["tokens"])
    same = {**batch, "teacher": objective.teacher_targets(outputs)}
    _, own = objective.loss(outputs, same)
    assert float(own["distill_loss"]) == pytest.approx(0.0, abs=1e-5)


def test_a_torchvision_teacher_runs_in_inference_mode(tmp_path):
    torch = pytest.importorskip("torch", reason="needs torch: pip install 'jaxmm[parity]'")
    torchvision = pytest.importorskip("torchvision", reason="needs torchvision")
    from tests.parity.reference import randomise_

    torch.manual_seed(0)
    reference = randomise_(torchvision.models.resnet18(num_classes=48)).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    config = resnet18_shapes.get_config("smoke")
    config.distill.teacher = str(path)
    config.distill.teacher_model = {"name": "resnet18"}
    builder = datasets.prepare_builder(config.data)
    student = tasks.make_task(config, builder, tmp_path)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    distiller = distillation.load_teacher(
        config, builder, tmp_path, student, mesh, sharding.DEFAULT_RULES
    )
    images = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with jax.set_mesh(mesh):
        ours = jax.jit(distiller.targets)(distiller.variables, {"image": jnp.asarray(images)})
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4 * np.abs(expected).max())


def smoke(module, **fields):
    config = module.get_config("smoke")
    config.progress_bar = False
    for key, value in fields.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    return config


@pytest.fixture(scope="module")
def classifier_teacher(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("teacher")
    jaxmm.train.run(smoke(resnet18_shapes), workdir)
    return workdir


@pytest.fixture(scope="module")
def clip_teacher(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("clip_teacher")
    jaxmm.train.run(smoke(clip_small), workdir)
    return workdir


def logged(workdir: pathlib.Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [line for line in map(json.loads, lines) if "train/loss" in line]


def test_distill_shapes_smoke_trains_from_a_teacher_run(classifier_teacher, tmp_path):
    config = smoke(distill_shapes, **{"distill.teacher": str(classifier_teacher)})
    metrics = jaxmm.train.run(config, tmp_path)
    assert 0 <= metrics["eval/top1"] <= 1
    weight = config.distill.weight
    for line in logged(tmp_path):
        mixed = (1 - weight) * line["train/task_loss"] + weight * line["train/distill_loss"]
        np.testing.assert_allclose(line["train/loss"], mixed, rtol=1e-5)
    # The checkpoint holds the student alone: the teacher is loaded, never saved.
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    saved, _ = restore_variables(tmp_path / "checkpoints", mesh)
    student = tasks.make_task(config, datasets.prepare_builder(config.data), tmp_path)
    shapes = jax.eval_shape(student.model.init, jax.random.PRNGKey(0), *student.init_inputs())
    assert set(traverse_util.flatten_dict(saved)) == set(
        traverse_util.flatten_dict(nn.unbox(shapes))
    )


def test_distill_clip_small_smoke_reads_the_teachers_tokens(clip_teacher, tmp_path):
    config = smoke(distill_clip_small, **{"distill.teacher": str(clip_teacher)})
    config.distill.embedding_weight = 0.5  # the smoke teacher's embedding width is the student's
    metrics = jaxmm.train.run(config, tmp_path)
    assert 0 <= metrics["zeroshot/top1"] <= 1
    copied = (tmp_path / tasks.TOKENIZER_FILE).read_bytes()
    assert copied == (clip_teacher / tasks.TOKENIZER_FILE).read_bytes()
    lines = logged(tmp_path)
    assert all(line["train/distill_loss"] > 0 for line in lines)
    assert all(line["train/embedding_distill_loss"] > 0 for line in lines)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"distill.teacher": "/no/such/run"}, r"distill.teacher /no/such/run does not exist"),
        (
            {"distill.teacher_model": {"name": "resnet_test", "num_classes": 10}},
            r"distill.teacher .*model.num_classes=10 but the dataset's 'label' feature has 48",
        ),
        ({"distill.weight": 1.5}, r"distill.weight must be \[0, 1.0\], got 1.5"),
        ({"distill.embedding_weight": 0.5}, r"embedding_weight is for CLIP students"),
    ],
)
def test_a_teacher_that_cannot_teach_stops_the_run_before_training(
    classifier_teacher, tmp_path, fields, message
):
    fields = {"distill.teacher": str(classifier_teacher), **fields}
    config = smoke(resnet18_shapes, **fields)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        jaxmm.train.run(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_clip_run_cannot_teach_a_classifier(clip_teacher, tmp_path):
    config = smoke(resnet18_shapes, **{"distill.teacher": str(clip_teacher)})
    with pytest.raises(ValueError, match=r"is a 'contrastive' run; the student is a 'classif"):
        jaxmm.train.run(config, tmp_path)


def test_a_teacher_that_cannot_read_the_students_inputs_is_named(clip_teacher, tmp_path):
    teacher_model = clip_small.get_config("smoke").model.to_dict()
    teacher_model["text"]["context_length"] = 8  # the student's tokens are 16 long
    config = smoke(
        clip_small,
        **{"distill.teacher": str(clip_teacher), "distill.teacher_model": teacher_model},
    )
    with pytest.raises(ValueError, match=r"the teacher clip_test cannot take the student's"):
        jaxmm.train.run(config, tmp_path)


def test_a_blockwise_contrastive_loss_is_refused(clip_teacher, tmp_path):
    config = smoke(clip_small, **{"distill.teacher": str(clip_teacher), "loss_impl": "chunked"})
    with pytest.raises(ValueError, match="use loss_impl='global' with distill.teacher"):
        jaxmm.train.run(config, tmp_path)
