"""`python -m jaxmm.evaluate` on real data: the 1,000-image Flickr8k sample in
`../shared/data/flickr8k_1000`, read through the user-data builder from its `pairs.jsonl`
(one line per image: path, 5 captions, official split), retrieval on the official test split.

The model is `configs/clip_captions.py:smoke`'s with random weights: the test checks the
plumbing and the bookkeeping (every image and caption of the split evaluated, recalls well
formed), not accuracy."""

import json
import pathlib

import jax
import numpy as np
import pytest
from absl import flags
from flax import linen as nn

from configs import clip_captions
from jaxmm.data import datasets
from jaxmm.evaluate import __main__ as cli
from jaxmm.evaluate import image_text
from jaxmm.train import tasks
from jaxmm.train.checkpoint import Checkpointer

REPO = pathlib.Path(__file__).resolve().parents[2]
SPLIT = "test"
KS = (1, 5, 10)


def _configure(config, pairs: pathlib.Path, data_dir: str):
    config.data.data_dir = data_dir
    config.data.builder_kwargs.path = str(pairs)
    config.eval.split = SPLIT


@pytest.fixture(scope="module")
def flickr(shared_data, tmp_path_factory):
    """`(pairs.jsonl, data_dir, run folder)`: the sample prepared as a tfds dataset, and a run
    folder holding what `python -m jaxmm.evaluate` reads (the config, the BPE tokenizer learnt
    from the train captions, a checkpoint) for the smoke model with random weights."""
    pairs = shared_data / "flickr8k_1000" / "pairs.jsonl"
    if not pairs.is_file():
        pytest.skip(f"Flickr8k sample not found at {pairs}")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    workdir = tmp_path_factory.mktemp("flickr_run")
    config = clip_captions.get_config("smoke")
    _configure(config, pairs, data_dir)
    (workdir / "config.json").write_text(config.to_json_best_effort())
    task = tasks.make_task(config, datasets.prepare_builder(config.data), workdir)
    # Random weights at the model's shapes: trained (or flax-initialised) ones would change
    # only the numbers, and compiling the model's initialisers alone takes ~20 s here.
    shapes = jax.eval_shape(task.model.init, jax.random.PRNGKey(0), *task.init_inputs())
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype),
        nn.unbox(shapes)["params"],
    )
    checkpointer = Checkpointer(workdir / "checkpoints")
    checkpointer.save(1, {"params": params}, {})
    checkpointer.close()
    return pairs, data_dir, workdir


def _split_in_file(pairs: pathlib.Path) -> dict[str, int]:
    """`{image path: number of captions}` of the split's lines, read straight from the file."""
    lines = [json.loads(line) for line in pairs.read_text().splitlines() if line.strip()]
    return {
        line["image"]: len(line["captions"]) for line in lines if line["official_split"] == SPLIT
    }


def test_cli_evaluates_every_image_and_caption_of_the_split(flickr, monkeypatch, tmp_path):
    pairs, data_dir, workdir = flickr
    retrieval_metrics, seen = image_text.retrieval_metrics, []

    def spy(image_embeddings, text_embeddings, text_to_image, **kwargs):
        metrics = retrieval_metrics(image_embeddings, text_embeddings, text_to_image, **kwargs)
        seen.append((image_embeddings.shape, text_embeddings.shape, text_to_image, metrics))
        return metrics

    monkeypatch.setattr(image_text, "retrieval_metrics", spy)
    flags.FLAGS(
        [
            "jaxmm.evaluate",
            f"--config={REPO / 'configs/clip_captions.py'}:smoke",
            f"--checkpoint={workdir}",
            f"--out={tmp_path}",
        ]
    )
    try:
        _configure(flags.FLAGS.config, pairs, data_dir)
        metrics = cli.main(["jaxmm.evaluate"])
    finally:
        flags.FLAGS.unparse_flags()

    expected = _split_in_file(pairs)
    assert len(expected) == 125 and set(expected.values()) == {5}  # Flickr8k's official test
    [(image_shape, text_shape, text_to_image, retrieval)] = seen
    assert image_shape[0] == len(expected)
    assert text_shape[0] == sum(expected.values()) == 625
    np.testing.assert_array_equal(np.bincount(text_to_image), np.full(len(expected), 5))
    # The evaluated split holds exactly the file's test images.
    config = clip_captions.get_config("smoke")
    _configure(config, pairs, data_dir)
    source = datasets.get_builder(config.data).as_data_source(SPLIT)
    image_ids = {source[i]["image_id"].decode() for i in range(len(source))}
    assert image_ids == set(expected)

    keys = [f"retrieval/{d}_r{k}" for d in ("i2t", "t2i") for k in KS]
    assert set(keys) <= set(metrics)
    assert {f"retrieval/{key}": value for key, value in retrieval.items()} == {
        key: metrics[key] for key in keys
    }
    for direction in ("i2t", "t2i"):
        recalls = [metrics[f"retrieval/{direction}_r{k}"] for k in KS]
        assert all(0.0 <= r <= 1.0 for r in recalls) and recalls == sorted(recalls), recalls
    # A recall is a count over the queries: a multiple of 1/125 (i2t) or 1/625 (t2i).
    for key, queries in (("i2t_r10", 125), ("t2i_r10", 625)):
        count = metrics[f"retrieval/{key}"] * queries
        assert abs(count - round(count)) < 1e-9, key
    assert json.loads((tmp_path / cli.METRICS_FILE).read_text()) == metrics
