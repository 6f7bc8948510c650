"""`python -m jaxmm.search` and `jaxmm.inference` on the smoke CLIP run: the index is built,
reused, updated and pruned; batching does not change embeddings; an image finds itself; bad
input is one line; and, when the reference data is present, the same on real photos."""

import dataclasses
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import linen as nn
from ml_collections import ConfigDict
from PIL import Image

import jaxmm.train
from configs import clip_small
from jaxmm import cli, convert, inference, search, sharding, weights
from jaxmm.data import export, pipeline
from jaxmm.data.image_ops import CLIP_MEAN, CLIP_STD
from jaxmm.inference import Encoders, load_clip
from jaxmm.models import create_model

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_IMAGES = 24


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> pathlib.Path:
    """A 4-step smoke CLIP run folder (trained on this process's 8 devices)."""
    workdir = tmp_path_factory.mktemp("clip_run")
    config = clip_small.get_config("smoke")
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.progress_bar = False
    jaxmm.train.run(config, workdir)
    # Searching needs no dataset: nothing of it is left to find.
    shutil.rmtree(config.data.data_dir)
    return workdir


@pytest.fixture(scope="module")
def clip(clip_run):
    return load_clip(workdir=clip_run)


@pytest.fixture(scope="module")
def encoders(clip):
    """Shared, so the tests compile the encoders once: batches of 8, one image a device."""
    return Encoders(clip, batch_size=8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> pathlib.Path:
    """The first `NUM_IMAGES` test-split scenes as 64-px JPEGs under `images/`."""
    out = tmp_path_factory.mktemp("exported")
    export.export_shapes(out, num=NUM_IMAGES, split="test")
    return out


@pytest.fixture
def folder(exported, tmp_path) -> pathlib.Path:
    """A private copy of the exported images, free to change."""
    return pathlib.Path(shutil.copytree(exported / "images", tmp_path / "photos"))


def _spy_on_images(encoders: Encoders, monkeypatch) -> list[int]:
    """Counts the rows `encoders.images` embeds, call by call."""
    calls, images = [], encoders.images

    def counting(batch):
        calls.append(len(batch))
        return images(batch)

    monkeypatch.setattr(encoders, "images", counting)
    return calls


def test_index_is_built_reused_updated_and_pruned(clip, encoders, folder, monkeypatch):
    embeds = _spy_on_images(encoders, monkeypatch)
    index, update = search.update_index(folder, encoders)

    path = folder / f".jaxmm_search_{clip.image_fingerprint}.npz"
    assert update.path == path and path.is_file()
    assert (update.embedded, update.reused, update.dropped, update.skipped) == (24, 0, 0, ())
    assert embeds == [8, 8, 8]  # fixed-size chunks
    names = sorted(f"test_{i:06d}.jpg" for i in range(NUM_IMAGES))
    with np.load(path) as stored:
        assert list(stored["paths"]) == names
        assert stored["embeddings"].dtype == np.float16
        assert stored["embeddings"].shape == (NUM_IMAGES, clip.embed_dim)
        np.testing.assert_array_equal(stored["sizes"], [os.path.getsize(folder / n) for n in names])
        fresh = encoders.images(np.stack([clip.load_image(folder / n) for n in names]))
        np.testing.assert_allclose(stored["embeddings"], fresh, atol=2e-3)

    # Nothing changed: nothing embedded, the file not rewritten.
    written = path.stat().st_mtime_ns
    embeds.clear()
    _, update = search.update_index(folder, encoders)
    assert (update.embedded, update.reused, update.dropped) == (0, 24, 0) and embeds == []
    assert path.stat().st_mtime_ns == written

    # One file's content replaced, one deleted, one undecodable and one nested file added.
    shutil.copyfile(folder / "test_000010.jpg", folder / "test_000003.jpg")
    (folder / "test_000004.jpg").unlink()
    (folder / "bad.png").write_bytes(b"not an image")
    (folder / "nested" / "deeper").mkdir(parents=True)
    shutil.copyfile(folder / "test_000007.jpg", folder / "nested" / "deeper" / "copy.JPG")
    embeds.clear()
    index, update = search.update_index(folder, encoders)
    assert (update.embedded, update.reused, update.dropped) == (2, 22, 1)
    assert [name for name, _ in update.skipped] == ["bad.png"]
    assert embeds == [2]  # one chunk: the undecodable file never reaches the model
    assert "test_000004.jpg" not in index.paths and "bad.png" not in index.paths
    rows = {name: row for name, row in zip(index.paths, index.embeddings, strict=True)}
    np.testing.assert_allclose(rows["test_000003.jpg"], rows["test_000010.jpg"], atol=2e-3)
    np.testing.assert_allclose(rows["nested/deeper/copy.JPG"], rows["test_000007.jpg"], atol=2e-3)
    assert search.Index.load(path).paths == index.paths


def test_batches_and_devices_do_not_change_embeddings(clip, clip_run, encoders, folder):
    """10 images in two batches of 8 over 8 devices (the second padded), in four batches of 3
    on one device, and in one call of the model: the same embeddings."""
    images = np.stack([clip.load_image(p) for p in sorted(folder.glob("*.jpg"))[:10]])
    two_batches = encoders.images(images)
    one_device = load_clip(clip_run, mesh=sharding.make_mesh(devices=jax.devices()[:1]))
    assert {d for leaf in jax.tree.leaves(one_device.variables) for d in leaf.devices()} == {
        jax.devices()[0]
    }
    single = Encoders(one_device, batch_size=3).images(images)
    encode = jax.jit(lambda v, x: clip.model.apply(v, x, method=clip.model.encode_image))
    direct = encode(jax.device_get(clip.variables), images)
    assert two_batches.shape == (10, clip.embed_dim)
    np.testing.assert_allclose(two_batches, single, atol=1e-6)
    np.testing.assert_allclose(two_batches, direct, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(two_batches, axis=1), 1.0, atol=1e-5)


def test_images_are_seen_as_the_runs_evaluation_sees_them(clip, clip_run, folder):
    data = ConfigDict(json.loads((clip_run / "config.json").read_text())["data"])
    path = folder / "test_000001.jpg"
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (64, 64, 3) and clip.image_size == data.image_size == 32
    np.testing.assert_array_equal(clip.load_image(path), pipeline.eval_image(pixels, data))


def test_fingerprint_follows_the_image_side_only(clip):
    def changed(top_level: str):
        params = dict(clip.variables["params"])
        params[top_level] = jax.tree.map(lambda x: x + 1, params[top_level])
        return dataclasses.replace(clip, variables={**clip.variables, "params": params})

    assert changed("text_tower").image_fingerprint == clip.image_fingerprint
    assert changed("logit_scale").image_fingerprint == clip.image_fingerprint
    assert changed("image_projection").image_fingerprint != clip.image_fingerprint
    assert changed("image_tower").image_fingerprint != clip.image_fingerprint
    assert '"crop_fraction": 1.0' in clip.description
    description = clip.description.replace('"crop_fraction": 1.0', '"crop_fraction": 0.875')
    other_crop = dataclasses.replace(clip, description=description)
    assert other_crop.image_fingerprint != clip.image_fingerprint


def test_image_query_finds_itself_first(clip_run, folder, capsys):
    query = folder / "test_000005.jpg"
    results = search.main(
        [
            f"--workdir={clip_run}",
            f"--images={folder}",
            f"--image={query}",
            "--top_k=4",
            "--batch_size=8",
            "a red circle",
        ]
    )
    assert [q for q, _ in results] == ["a red circle", str(query)]
    text_hits, image_hits = results[0][1], results[1][1]
    assert image_hits[0][0] == "test_000005.jpg"
    assert image_hits[0][1] == pytest.approx(1.0, abs=2e-3)
    for hits in (text_hits, image_hits):
        scores = [score for _, score in hits]
        assert len(hits) == 4 and scores == sorted(scores, reverse=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a red circle" and out[5] == str(query)
    assert out[6].split() == ["1", f"{image_hits[0][1]:.3f}", str(query)]


def test_grid_is_a_png_of_the_hits(folder, tmp_path):
    pytest.importorskip("matplotlib", reason="--grid draws with matplotlib")
    grid = tmp_path / "hits.png"
    hits = [("test_000001.jpg", 0.91), ("test_000002.jpg", 0.5), ("deleted.jpg", 0.25)]
    search.write_grid(grid, folder, [("a red circle", hits), ("like test_000001.jpg", hits[:1])])
    with Image.open(grid) as image:
        assert image.format == "PNG"
        # Two rows of three 1.9 x 2.2 inch cells at 100 dpi, and the row labels.
        assert image.width >= 3 * 190 and image.height >= 2 * 200


def _one_line_error(argv, capsys) -> str:
    """The message `python -m jaxmm.search ARGV` exits with (Python prints it to stderr)."""
    with pytest.raises(SystemExit) as exit_info, cli.one_line_errors():
        search.main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    assert capsys.readouterr().err == ""  # nothing else on stderr
    return message


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_folder", "no such folder"),
        ("empty_folder", "no images"),
        ("no_query", "no query"),
        ("missing_workdir", "no such folder"),
        ("no_checkpoint", "no checkpoint"),
        ("unknown_tag", "has no weights 'nope'"),
        ("not_clip", "not a CLIP model"),
        ("no_model", "--workdir --weights is required"),
        ("grid_not_png", "name a .png file"),
    ],
)
def test_bad_input_is_one_line(case, expected, clip_run, folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    unfinished = tmp_path / "unfinished_run"
    unfinished.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(clip_run / name, unfinished / name)
    model = f"--workdir={clip_run}"
    argv = {
        "missing_folder": [model, f"--images={tmp_path / 'nope'}", "a dog"],
        "empty_folder": [model, f"--images={empty}", "a dog"],
        "no_query": [model, f"--images={folder}"],
        "missing_workdir": [f"--workdir={tmp_path / 'nope'}", f"--images={folder}", "a dog"],
        "no_checkpoint": [f"--workdir={unfinished}", f"--images={folder}", "a dog"],
        "unknown_tag": ["--weights=clip_vit_b32@nope", f"--images={folder}", "a dog"],
        "not_clip": ["--weights=resnet50@torchvision:IMAGENET1K_V2", f"--images={folder}", "x"],
        "no_model": [f"--images={folder}", "a dog"],
        "grid_not_png": [model, f"--images={folder}", "--grid=hits.jpg", "a dog"],
    }[case]
    assert expected in _one_line_error(argv, capsys)
    assert not list(folder.glob(".jaxmm_search_*"))  # failed before indexing


def test_command_on_one_device_reads_a_run_written_on_eight(clip_run, folder):
    """`python -m jaxmm.search` in a fresh process that sees one device: the checkpoint
    written on 8 devices restores there, and bad input is one line and status 1."""
    env = {**os.environ, "XLA_FLAGS": "", "JAXMM_TRACEBACK": ""}
    command = [sys.executable, "-m", "jaxmm.search", f"--workdir={clip_run}"]
    ok = subprocess.run(
        [*command, f"--images={folder}", "--top_k=2", "a blue star"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0] == "a blue star" and len(lines) == 3
    assert all(line.split()[2].startswith(str(folder)) for line in lines[1:])
    assert "24 images (24 embedded" in ok.stderr

    bad = subprocess.run(
        [*command, f"--images={folder / 'nope'}", "a dog"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        f"error: --images={folder / 'nope'}: no such folder"
    ]


def test_published_weights_by_tag(folder, tmp_path, monkeypatch):
    """A weights tag (here `clip_test@local`: random weights in open_clip's layout, served
    from a file) brings its normalisation, crop and input size; its text tower must fit
    OpenAI's tokenizer, which the registry's tiny CLIP does not."""
    safetensors = pytest.importorskip("safetensors.numpy")
    model = create_model("clip_test")
    inputs = (np.zeros((1, 32, 32, 3), np.float32), np.zeros((1, 16), np.int32))
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs))
    rng = np.random.default_rng(0)
    random = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    file = tmp_path / "clip_test_local.safetensors"
    safetensors.save_file(convert.to_torch("clip_test", random), str(file))
    monkeypatch.setattr(weights, "_REGISTERED", {})
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    weights.register(
        weights.Weights(
            "clip_test",
            "local",
            file.as_uri(),
            weights.sha256_of(file),
            "open_clip",
            mean=CLIP_MEAN,
            std=CLIP_STD,
            crop_fraction=0.875,
        )
    )
    with pytest.raises(ValueError, match="makes 49408 token ids, but the text tower"):
        load_clip(weights="clip_test@local")
    assert not (tmp_path / "cache").exists()  # refused before the download

    # A stand-in that fits the tiny text tower; only image queries are made below.
    monkeypatch.setattr(inference, "load_clip_tokenizer", lambda: SimpleNamespace(vocab_size=512))
    clip = load_clip(weights="clip_test@local")
    assert clip.source == "clip_test@local" and clip.context_length == 16
    assert (clip.image_size, clip.mean, clip.std, clip.crop_fraction) == (
        32,  # 4 x 4 patches of 8 px: 16 positions and the class token
        CLIP_MEAN,
        CLIP_STD,
        0.875,
    )
    np.testing.assert_array_equal(
        clip.variables["params"]["image_tower"]["pos_embed"],
        random["params"]["image_tower"]["pos_embed"],
    )
    encoders = Encoders(clip, batch_size=8)
    index, _ = search.update_index(folder, encoders, tmp_path / "index.npz", "float32")
    query = encoders.images(clip.load_image(folder / "test_000003.jpg")[None])
    assert search.search(index, query, top_k=1)[0][0][0] == "test_000003.jpg"


def test_real_photos_find_themselves(clip, encoders, shared_data, tmp_path):
    """Flickr8k photos (JPEGs of many sizes and aspect ratios): each of several query photos
    is its own best hit."""
    photos = shared_data / "flickr8k_1000" / "images"
    if not photos.is_dir():
        pytest.skip(f"Flickr8k sample not found at {photos}")
    folder = tmp_path / "flickr"
    folder.mkdir()
    for path in sorted(photos.glob("*.jpg"))[:48]:
        shutil.copyfile(path, folder / path.name)
    index, update = search.update_index(folder, encoders, tmp_path / "index.npz", "float32")
    assert update.embedded == 48 and not update.skipped
    queries = index.paths[::12]
    embeddings = encoders.images(np.stack([clip.load_image(folder / q) for q in queries]))
    for query, hits in zip(queries, search.search(index, embeddings, top_k=3), strict=True):
        assert hits[0][0] == query and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        assert hits[1][1] < hits[0][1]


def test_index_file_is_plain_numpy(clip, encoders, folder):
    """The index opens without pickles and its arrays line up."""
    _, update = search.update_index(folder, encoders, dtype="float32")
    with np.load(io.BytesIO(update.path.read_bytes()), allow_pickle=False) as stored:
        assert set(stored.files) == {
            "version",
            "fingerprint",
            "paths",
            "sizes",
            "mtimes",
            "embeddings",
        }
        assert str(stored["fingerprint"]) == clip.image_fingerprint
        assert stored["embeddings"].dtype == np.float32
        assert len(stored["paths"]) == len(stored["mtimes"]) == len(stored["embeddings"])
