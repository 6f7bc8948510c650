"""The captioning task end to end: a smoke run trains and evaluates, `python -m
jaxmm.evaluate` reproduces its metrics, and `python -m jaxmm.caption` captions images as the
evaluation does; plus the training example and the objective by hand."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import jaxmm.train
from configs import caption_coco, caption_small
from jaxmm import caption, sharding
from jaxmm.data import datasets, pipeline
from jaxmm.evaluate import __main__ as evaluate_command
from jaxmm.train import config_check, objectives
from jaxmm.train.caption_task import CaptioningTask, caption_example
from jaxmm.train.pretrained import load_variables

pytest.importorskip("pycocoevalcap", reason="needs pycocoevalcap: pip install 'jaxmm[caption]'")
METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")


@pytest.fixture(scope="module", autouse=True)
def captioning_schema():
    """The config check's schema of a captioning config is configs/caption_small.py."""
    with pytest.MonkeyPatch.context() as patch:
        if "captioning" not in config_check.BASE_CONFIGS:
            patch.setitem(config_check.BASE_CONFIGS, "captioning", "configs.caption_small")
        yield


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """caption_small:smoke trained for 4 steps (beam search of 2 in its evaluation)."""
    config = caption_small.get_config("smoke")
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.progress_bar = False
    workdir = tmp_path_factory.mktemp("run")
    metrics = jaxmm.train.run(config, workdir)
    return config, workdir, metrics


def test_smoke_run_reports_caption_metrics(smoke_run):
    config, workdir, metrics = smoke_run
    for name in METRICS + ("attribute_accuracy", "heldout_attribute_accuracy"):
        assert 0 <= metrics[f"caption/{name}"] <= (10 if name == "cider" else 1), name
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/token_accuracy" in line for line in lines)
    assert {"caption/bleu4", "caption/cider"} <= set(lines[-1])
    assert lines[-1]["step"] == config.total_steps


def test_evaluate_command_reproduces_the_runs_metrics(smoke_run, tmp_path):
    config, workdir, metrics = smoke_run
    again = evaluate_command.evaluate(config, workdir, out=tmp_path)
    assert again.keys() == metrics.keys()
    for key, value in metrics.items():
        assert again[key] == pytest.approx(value, abs=1e-9), key
    assert json.loads((tmp_path / "eval_metrics.json").read_text()).keys() == metrics.keys()


def test_caption_command_captions_as_the_evaluation_does(smoke_run, tmp_path, capsys):
    """The command's caption of a test image saved as PNG equals the one the task's own
    generator gives the record's evaluation view (same checkpoint, beam search of 2)."""
    config, workdir, _ = smoke_run
    builder = datasets.prepare_builder(config.data)
    source = builder.as_data_source("test")
    paths = []
    for index in range(8):  # a multiple of the test mesh's 8 devices
        paths.append(tmp_path / f"test{index}.png")
        Image.fromarray(np.asarray(source[index]["image"])).save(paths[-1])
    got = caption.main([f"--workdir={workdir}", "--beam_size=2", *map(str, paths)])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{p}\t{c}" for p, c in zip(paths, got, strict=True)]

    task = CaptioningTask(config, builder, workdir)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    generate = task.generator(mesh, max_length=config.data.context_length, beam_size=2)
    images = np.stack([pipeline.eval_image(source[i]["image"], config.data) for i in range(8)])
    tokens = np.asarray(generate(load_variables(str(workdir), None), images))
    assert got == [task.tokenizer.decode(row) for row in tokens]


def test_caption_command_names_bad_input(smoke_run, tmp_path):
    _, workdir, _ = smoke_run
    with pytest.raises(FileNotFoundError, match="no such image file: .*missing.png"):
        caption.main([f"--workdir={workdir}", str(tmp_path / "missing.png")])
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        caption.main([f"--workdir={tmp_path / 'nothing'}", str(image)])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        caption.main([f"--workdir={tmp_path}", str(image)])
    (tmp_path / "config.json").write_text(json.dumps({"task": "contrastive"}))
    with pytest.raises(ValueError, match="'contrastive' run, not a captioning run"):
        caption.main([f"--workdir={tmp_path}", str(image)])
    with pytest.raises(ValueError, match="--max_length must be in"):
        caption.main([f"--workdir={workdir}", "--max_length=99", str(image)])


def test_training_example_shifts_one_caption(smoke_run):
    config, workdir, _ = smoke_run
    builder = datasets.prepare_builder(config.data)
    task = CaptioningTask(config, builder, workdir)
    record = builder.as_data_source("train")[0]
    example = caption_example(
        record, np.random.default_rng(0), tokenizer=task.tokenizer, config=config.data
    )
    tokens, targets = example["tokens"], example["targets"]
    assert tokens.shape == targets.shape == (config.data.context_length - 1,)
    assert tokens[0] == task.tokenizer.sot_id
    np.testing.assert_array_equal(tokens[1:], targets[:-1])
    captions = [pipeline.as_text(c).lower().rstrip(".") for c in record["captions"]]
    assert task.tokenizer.decode(targets).rstrip(" .") in captions
    assert example["image"].shape == (config.data.image_size,) * 2 + (3,)


def test_objective_by_hand():
    """Cross-entropy over the non-padding targets only, smoothed as optax smooths labels."""
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    targets = jnp.asarray([[1, 4, 0], [2, 0, 0]])
    loss, metrics = objectives.Captioning(0.0).loss(logits, {"targets": targets})
    logp = jax.nn.log_softmax(logits)
    want = -(logp[0, 0, 1] + logp[0, 1, 4] + logp[1, 0, 2]) / 3
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    hits = [logits[0, 0].argmax() == 1, logits[0, 1].argmax() == 4, logits[1, 0].argmax() == 2]
    assert float(metrics["token_accuracy"]) == pytest.approx(np.mean(hits))
    smoothed, _ = objectives.Captioning(0.2).loss(logits, {"targets": targets})
    labels = optax.smooth_labels(jax.nn.one_hot(targets, 5), 0.2)
    per_token = -(labels * logp).sum(-1)
    want = (per_token[0, 0] + per_token[0, 1] + per_token[1, 0]) / 3
    assert float(smoothed) == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        objectives.Captioning(1.0)


def test_configs_check_and_coco_loads_only_the_image_tower():
    for module in (caption_small, caption_coco):
        for arg in (None, "smoke"):
            config_check.check_config(module.get_config(arg))
    coco = caption_coco.get_config()
    assert coco.init_from == "clip_vit_b32@openai" and CaptioningTask.pretrained_subtrees == (
        "image_tower",
    )
    assert coco.data.name == "coco_caption_files" and coco.eval.beam_size == 3
