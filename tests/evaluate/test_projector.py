"""`write_projector`: the files TensorBoard's embedding projector reads, checked with
protobuf's own text-format parser against TensorBoard's `ProjectorConfig` schema, numpy's
TSV reader and PIL."""

import csv
import math

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from PIL import Image

import jaxmm.train
from configs import clip_small
from jaxmm.evaluate import projector

N, M, E = 5, 7, 8


def projector_config_class():
    """TensorBoard's `tensorboard.projector.ProjectorConfig` message, built from the field
    numbers of tensorboard/plugins/projector/projector_config.proto (TensorBoard itself is
    not a dependency)."""
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="projector_config.proto", package="tensorboard.projector", syntax="proto3"
    )

    def add(message, name, number, kind, repeated=False, type_name=None):
        message.field.add(
            name=name,
            number=number,
            type=kind,
            label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL,
            type_name=type_name,
        )

    sprite = file.message_type.add(name="SpriteMetadata")
    add(sprite, "image_path", 1, field.TYPE_STRING)
    add(sprite, "single_image_dim", 2, field.TYPE_UINT32, repeated=True)
    info = file.message_type.add(name="EmbeddingInfo")
    add(info, "tensor_name", 1, field.TYPE_STRING)
    add(info, "metadata_path", 2, field.TYPE_STRING)
    add(info, "bookmarks_path", 3, field.TYPE_STRING)
    add(info, "tensor_shape", 4, field.TYPE_UINT32, repeated=True)
    add(info, "sprite", 5, field.TYPE_MESSAGE, type_name=".tensorboard.projector.SpriteMetadata")
    add(info, "tensor_path", 6, field.TYPE_STRING)
    config = file.message_type.add(name="ProjectorConfig")
    add(config, "model_checkpoint_path", 1, field.TYPE_STRING)
    add(
        config,
        "embeddings",
        2,
        field.TYPE_MESSAGE,
        repeated=True,
        type_name=".tensorboard.projector.EmbeddingInfo",
    )
    add(config, "model_checkpoint_dir", 3, field.TYPE_STRING)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorboard.projector.ProjectorConfig")
    )


def read_config(logdir):
    config = projector_config_class()()
    text_format.Parse((logdir / projector.CONFIG_FILE).read_text(), config)
    return config


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((N, E)).astype(np.float32)
    texts = rng.standard_normal((M, E)).astype(np.float32)
    thumbnails = rng.integers(0, 256, (N, 12, 16, 3), dtype=np.uint8)  # h 12, w 16
    captions = [f"caption {i}" for i in range(M)]
    captions[1] = "a red\tcircle\non grass"
    return images, texts, thumbnails, captions


def test_files_parse_and_agree(tmp_path, inputs):
    images, texts, thumbnails, captions = inputs
    folder = projector.write_projector(tmp_path, images, texts, thumbnails, captions, step=3)

    (entry,) = read_config(tmp_path).embeddings
    assert entry.tensor_name == "clip step 3"
    assert list(entry.tensor_shape) == [N + M, E]
    assert list(entry.sprite.single_image_dim) == [16, 16]
    for path in (entry.tensor_path, entry.metadata_path, entry.sprite.image_path):
        assert (tmp_path / path).is_file() and (tmp_path / path).parent == folder

    tensors = np.loadtxt(tmp_path / entry.tensor_path, delimiter="\t")
    np.testing.assert_allclose(tensors, np.concatenate([images, texts]), rtol=1e-6)

    with open(tmp_path / entry.metadata_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["caption", "kind"] and len(rows) == 1 + N + M
    assert [kind for _, kind in rows[1:]] == ["image"] * N + ["text"] * M
    assert rows[1 + N + 1][0] == "a red circle on grass"
    assert [caption for caption, _ in rows[1 : 1 + N]] == [f"image {i}" for i in range(N)]

    with Image.open(tmp_path / entry.sprite.image_path) as image:
        sprite = np.asarray(image.convert("RGB"))
    per_row = math.ceil(math.sqrt(N + M))  # 4
    assert sprite.shape == (per_row * 16, per_row * 16, 3)

    def tile(i):
        top, left = (i // per_row) * 16, (i % per_row) * 16
        return sprite[top : top + 16, left : left + 16]

    for i in range(N):  # 16 x 12 fits the 16-px tile unscaled, 2 rows of black above it
        np.testing.assert_array_equal(tile(i)[2:14], thumbnails[i])
        assert not tile(i)[:2].any() and not tile(i)[14:].any()
    for i in range(N, N + M):
        assert (tile(i) == projector.TEXT_TILE).all()
    assert not tile(N + M).any()  # the unused tiles stay black


def test_paired_captions_label_the_images(tmp_path, inputs):
    images, _, thumbnails, _ = inputs
    captions = [f"image {i}'s caption" for i in range(N)]
    projector.write_projector(tmp_path, images, images + 0.1, thumbnails, captions, step=0)
    (entry,) = read_config(tmp_path).embeddings
    with open(tmp_path / entry.metadata_path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    assert [c for c, _ in rows[1 : 1 + N]] == [c for c, _ in rows[1 + N :]] == captions


def test_each_step_adds_an_entry_and_a_rewrite_replaces_it(tmp_path, inputs):
    images, texts, thumbnails, captions = inputs
    for step in (200, 10, 200):
        projector.write_projector(tmp_path, images, texts, thumbnails, captions, step=step)
    names = [entry.tensor_name for entry in read_config(tmp_path).embeddings]
    assert names == ["clip step 10", "clip step 200"]


def test_large_sprites_shrink_their_tiles(tmp_path, inputs, monkeypatch):
    images, texts, thumbnails, captions = inputs
    monkeypatch.setattr(projector, "MAX_SPRITE_SIDE", 40)  # 4 tiles a row: at most 10 px each
    projector.write_projector(tmp_path, images, texts, thumbnails / 255.0, captions, step=1)
    (entry,) = read_config(tmp_path).embeddings
    assert list(entry.sprite.single_image_dim) == [10, 10]
    with Image.open(tmp_path / entry.sprite.image_path) as image:
        assert image.size == (40, 40)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(text_embeddings=np.zeros((M, E + 1))), "one width"),
        (dict(captions=["one"]), "1 captions for 7 text embeddings"),
        (dict(thumbnails=np.zeros((N - 1, 8, 8, 3), np.uint8)), "thumbnails must be"),
        (dict(image_captions=["one"]), "1 image captions for 5 images"),
        (dict(step=-1), "non-negative"),
    ],
)
def test_inconsistent_inputs_are_refused(tmp_path, inputs, change, message):
    images, texts, thumbnails, captions = inputs
    arguments = dict(
        image_embeddings=images,
        text_embeddings=texts,
        thumbnails=thumbnails,
        captions=captions,
        step=0,
    )
    with pytest.raises(ValueError, match=message):
        projector.write_projector(tmp_path, **{**arguments, **change})
    assert not (tmp_path / projector.CONFIG_FILE).exists()


def test_a_clip_run_writes_its_evaluation_embeddings_for_the_projector(tmp_path):
    """`eval.projector_samples`: the trainer's evaluation writes that many images and their
    captions, embedded by the run's model, beside the event files."""
    config = clip_small.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    config.progress_bar = False
    config.eval.projector_samples = 10
    jaxmm.train.run(config, tmp_path / "run")
    logdir = tmp_path / "run" / "tensorboard"
    assert "embeddings" in (logdir / "projector_config.pbtxt").read_text()
    (step,) = (logdir / "projector").iterdir()
    rows = (step / "tensors.tsv").read_text().splitlines()
    assert len(rows) == 20 and len(rows[0].split("\t")) == config.model.embed_dim
    kinds = [line.split("\t")[1] for line in (step / "metadata.tsv").read_text().splitlines()[1:]]
    assert kinds == ["image"] * 10 + ["text"] * 10
