"""The VQA task end to end: smoke training, the evaluation command, towers from a CLIP run,
a user's JSONL of questions, the soft-target loss and the TensorBoard samples."""

import json
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from ml_collections import ConfigDict
from PIL import Image

import jaxmm.train
from configs import clip_small, vqa_xattn
from jaxmm import convert, sharding, weights
from jaxmm.data import datasets
from jaxmm.evaluate import __main__ as evaluate_cli
from jaxmm.models import create_model
from jaxmm.models.positions import resample_position_embedding
from jaxmm.train import tasks
from jaxmm.train.metric_writer import MetricWriter
from jaxmm.train.objectives import SoftTargetClassification
from jaxmm.train.pretrained import load_pretrained, load_variables


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def smoke_config(data_dir: str, **model):
    config = vqa_xattn.get_config("smoke")
    config.data.data_dir = data_dir
    config.progress_bar = False
    config.model.update(model)
    return config


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory, data_dir) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("vqa_run")
    jaxmm.train.run(smoke_config(data_dir), workdir)
    return workdir


def test_evaluation_command_reproduces_the_runs_metrics(vqa_run, data_dir, tmp_path):
    metrics = evaluate_cli.evaluate(smoke_config(data_dir), vqa_run, tmp_path)
    final = json.loads((vqa_run / "final_metrics.json").read_text())
    assert metrics == pytest.approx(final, abs=1e-6)
    assert (vqa_run / "answers.txt").read_text().split("\n")[:2] == ["yes", "no"]


def test_eval_samples_show_question_prediction_and_truth(vqa_run, data_dir, tmp_path):
    config = smoke_config(data_dir)
    task = tasks.make_task(config, datasets.prepare_builder(config.data), vqa_run)
    variables = load_variables(str(vqa_run), task=None)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    task.evaluator(mesh)(variables)
    samples = task.eval_samples(4)
    assert len(samples) == 4
    for image, text in samples:
        assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8
        assert text.startswith("Q: ") and "predicted: " in text and "true: " in text
    writer = MetricWriter(tmp_path)
    writer.write_samples(1, samples)
    writer.close()
    (events,) = (tmp_path / "tensorboard").iterdir()
    assert events.stat().st_size > sum(image.size for image, _ in samples) // 10


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, data_dir) -> tuple[pathlib.Path, ConfigDict]:
    """A smoke CLIP run at 32 px and its config."""
    clip_config = clip_small.get_config("smoke")
    clip_config.data.data_dir = data_dir
    clip_config.progress_bar = False
    workdir = tmp_path_factory.mktemp("clip")
    jaxmm.train.run(clip_config, workdir)
    return workdir, clip_config


def _from_clip(clip_run, data_dir: str, **changes) -> ConfigDict:
    """The smoke VQA config with the CLIP run's towers, one step at learning rate 0."""
    workdir, clip_config = clip_run
    config = smoke_config(
        data_dir, image=dict(clip_config.model.image), text=dict(clip_config.model.text)
    )
    config.init_from = str(workdir)
    config.total_steps = 1
    config.optim.learning_rate = 0.0  # the loaded values stay as loaded
    config.update(changes)
    return config


def _params(run: pathlib.Path) -> dict[tuple[str, ...], np.ndarray]:
    return traverse_util.flatten_dict(load_variables(str(run), None)["params"])


def test_towers_start_from_a_clip_run_and_the_rest_fresh(tmp_path, data_dir, clip_run):
    jaxmm.train.run(_from_clip(clip_run, data_dir), tmp_path / "vqa")
    # The CLIP run's own tokenizer comes along: its text tower knows no other vocabulary.
    clip_tokenizer = (clip_run[0] / "tokenizer.json").read_bytes()
    assert (tmp_path / "vqa/tokenizer.json").read_bytes() == clip_tokenizer
    clip, vqa = _params(clip_run[0]), _params(tmp_path / "vqa")
    towers = {path for path in vqa if path[0] in ("image_tower", "text_tower")}
    assert towers and len(towers) < len(vqa)
    for path in towers:
        np.testing.assert_array_equal(vqa[path], clip[path], err_msg="/".join(path))


def test_the_image_tower_alone_at_another_image_size(tmp_path, data_dir, clip_run):
    """`init_towers=("image_tower",)` from the 32 px CLIP into a 64 px VQA model: its own
    question tokenizer and a fresh text tower; the ViT's 4x4 position grid resampled to 8x8
    (`tests/models/test_vit_positions.py` checks the resampling against PyTorch)."""
    config = _from_clip(clip_run, data_dir, init_towers=("image_tower",))
    config.data.image_size = 64
    jaxmm.train.run(config, tmp_path / "vqa")
    clip_tokenizer = (clip_run[0] / "tokenizer.json").read_bytes()
    assert (tmp_path / "vqa/tokenizer.json").read_bytes() != clip_tokenizer
    clip, vqa = _params(clip_run[0]), _params(tmp_path / "vqa")
    position = ("image_tower", "pos_embed")
    # The class token's embedding first, then the patch grid.
    assert clip[position].shape[1] == 1 + 16 and vqa[position].shape[1] == 1 + 64
    np.testing.assert_allclose(
        vqa[position], resample_position_embedding(clip[position], 1 + 64), rtol=1e-6
    )
    for path in (p for p in vqa if p[0] == "image_tower" and p != position):
        np.testing.assert_array_equal(vqa[path], clip[path], err_msg="/".join(path))
    text = [p for p in vqa if p[0] == "text_tower" and vqa[p].shape == clip[p].shape]
    assert text and not all(np.array_equal(vqa[p], clip[p]) for p in text)


def test_init_towers_must_name_towers(tmp_path, data_dir, clip_run):
    for towers in ((), ("image_tower", "fusion")):
        with pytest.raises(ValueError, match="init_towers=.*name one or both of"):
            jaxmm.train.run(_from_clip(clip_run, data_dir, init_towers=towers), tmp_path / "x")


def write_questions(folder: pathlib.Path) -> pathlib.Path:
    """A user's VQA file: 12 coloured images, two questions each, ten human answers."""
    rng = np.random.default_rng(0)
    lines = []
    for index in range(12):
        colour = ("red", "green", "blue")[index % 3]
        pixels = np.zeros((40, 40, 3), np.uint8)
        pixels[..., index % 3] = 220
        Image.fromarray(pixels + rng.integers(0, 30, pixels.shape, dtype=np.uint8)).save(
            folder / f"{index}.jpg"
        )
        split = "validation" if index >= 9 else "train"
        answers = [colour] * 7 + ["dark " + colour] * 3
        lines.append(dict(image=f"{index}.jpg", question="What colour is it?", answers=answers))
        # Longer than the context: cut and counted, never a crash.
        long = "Is it " + " very" * 40 + " bright?"
        lines.append(dict(image=f"{index}.jpg", question=long, answers=["yes"] * 10))
        lines[-2]["split"] = lines[-1]["split"] = split
    path = folder / "questions.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_a_users_jsonl_trains_and_scores_with_soft_accuracy(tmp_path):
    config = smoke_config(str(tmp_path / "tfds"))
    config.data.name = "vqa_file"
    config.data.builder_kwargs.path = str(write_questions(tmp_path))
    config.data.num_answers = 4
    config.eval.split = "validation"
    config.eval.batch_size = 8
    metrics = jaxmm.train.run(config, tmp_path / "run")
    assert metrics["vqa/truncated_questions"] == 3  # the 3 long validation questions
    # Answers are scored against the ten humans: "red" (7 of 10) scores 1, "dark red" 0.9.
    assert 0 <= metrics["vqa/accuracy"] <= 1
    answers = (tmp_path / "run/answers.txt").read_text().split()
    assert "yes" in answers and len((tmp_path / "run/answers.txt").read_text().splitlines()) == 4


def test_soft_target_loss_by_hand():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 0.0, 0.0]])
    # Question 1: answers 0 (score 1.0) and 1 (0.3); question 2: answer 1 only; question 3:
    # nothing in the vocabulary, so no weight.
    targets = jnp.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss, metrics = SoftTargetClassification().loss(logits, {"targets": targets})
    log_softmax = lambda z: z - np.log(np.exp(z).sum())  # noqa: E731
    first = -(np.array([1.0, 0.3, 0]) / 1.3 * log_softmax(np.array([2.0, 0, 0]))).sum()
    second = -log_softmax(np.array([0.0, 1, 0]))[1]
    np.testing.assert_allclose(loss, (first + second) / 2, rtol=1e-6)
    # Top answers 0, 1, 0 score 1.0, 1.0 and 0.0.
    np.testing.assert_allclose(metrics["accuracy"], 2 / 3, rtol=1e-6)


def test_soft_target_loss_over_several_questions_per_image_skips_the_padding():
    # Two images of three questions; the last question of image 1 is padding (no target).
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    targets = jnp.asarray(rng.uniform(size=(2, 3, 4)) * (rng.uniform(size=(2, 3, 4)) > 0.5))
    targets = targets.at[0, 0].set(jnp.array([0.0, 1.0, 0.0, 0.0])).at[1, 2].set(0.0)
    tokens = jnp.ones((2, 3, 5), jnp.int32).at[1, 2].set(0)
    loss, metrics = SoftTargetClassification().loss(logits, {"targets": targets, "tokens": tokens})
    keep = np.asarray(targets.sum(-1) > 0).reshape(-1)
    assert keep.sum() == 5
    flat_loss, flat_metrics = SoftTargetClassification().loss(
        logits.reshape(6, 4)[keep], {"targets": targets.reshape(6, 4)[keep]}
    )
    np.testing.assert_allclose(loss, flat_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], flat_metrics["accuracy"], rtol=1e-6)
    assert SoftTargetClassification().loss_weight({"targets": targets}) == 5


def test_an_example_draws_distinct_questions_and_pads_with_empty_ones(data_dir, tmp_path):
    config = smoke_config(data_dir)
    task = tasks.make_task(config, datasets.prepare_builder(config.data), tmp_path)
    record = datasets.prepare_builder(config.data).as_data_source("train")[0]
    asked = {tuple(task.tokens(q)) for q in record["questions"]}
    for count in (3, 7, 9):
        config.data.questions_per_image = count
        example = task.example_fn(record, np.random.default_rng(count))
        tokens, targets = example["tokens"], example["targets"]
        assert tokens.shape == (count, config.data.context_length), count
        real = min(count, len(record["questions"]))
        drawn = {tuple(row) for row in tokens[:real]}
        assert len(drawn) == real and drawn <= asked, count  # distinct questions of the image
        assert (targets[:real].sum(-1) == 1).all()  # one answer each, one-hot
        assert not tokens[real:].any() and not targets[real:].any()  # padding: no loss
    config.data.questions_per_image = 1
    example = task.example_fn(record, np.random.default_rng(0))
    assert example["tokens"].shape == (config.data.context_length,)


def test_towers_start_from_a_clip_weights_tag(tmp_path, monkeypatch):
    """`init_from=clip_test@local` (random weights in open_clip's layout, served from a file)
    for a fusion model with `clip_test`'s towers: the towers are the converted CLIP's, the
    fusion keeps its fresh values."""
    safetensors = pytest.importorskip("safetensors.numpy")
    images, tokens = np.zeros((1, 32, 32, 3), np.float32), np.zeros((1, 16), np.int32)
    clip = create_model("clip_test")
    shapes = nn.unbox(jax.eval_shape(clip.init, jax.random.PRNGKey(0), images, tokens))
    rng = np.random.default_rng(0)
    random = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    file = tmp_path / "clip_test_local.safetensors"
    safetensors.save_file(convert.to_torch("clip_test", random), str(file))
    monkeypatch.setattr(weights, "_REGISTERED", {})
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    weights.register(
        weights.Weights("clip_test", "local", file.as_uri(), weights.sha256_of(file), "open_clip")
    )
    fusion = create_model("fusion_test", fusion="concat")
    task = types.SimpleNamespace(
        model=fusion,
        model_name="fusion_test",
        model_overrides={"fusion": "concat"},
        pretrained_subtrees=("image_tower", "text_tower"),
        init_inputs=lambda: (images, tokens),
    )
    fresh = nn.unbox(fusion.init(jax.random.PRNGKey(1), images, tokens))
    loaded = load_pretrained("clip_test@local", task, fresh)
    flat_loaded = traverse_util.flatten_dict(loaded["params"])
    flat_clip = traverse_util.flatten_dict(random["params"])
    flat_fresh = traverse_util.flatten_dict(fresh["params"])
    for path, value in flat_loaded.items():
        expected = flat_clip[path] if path[0] in ("image_tower", "text_tower") else flat_fresh[path]
        np.testing.assert_array_equal(value, expected, err_msg="/".join(path))
