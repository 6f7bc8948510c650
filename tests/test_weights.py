"""Pretrained weights by name (`jaxmm.weights`): download, resume, hash checks, offline mode,
and the three ways in (`create_model(pretrained=)`, `init_from`, `jaxmm.classify --weights`),
all against a local HTTP server; plus the form of every entry of the real registry."""

import dataclasses
import hashlib
import http.server
import json
import pathlib
import re
import subprocess
import sys
import threading
import types

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from PIL import Image

from jaxmm import convert, weights
from jaxmm.models import create_model, list_models
from jaxmm.train.pretrained import load_pretrained

safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="needs safetensors")

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = "resnet_test"
TAG = "test:tiny"
FILENAME = "resnet_test-tiny.safetensors"


class Server(http.server.ThreadingHTTPServer):
    """Serves `files` (name -> bytes) with HTTP Range support, and misbehaves on request.

    `drop_after[name] = n` sends the full Content-Length but only `n` bytes, then closes the
    connection (once); `corrupt` names files served with one byte flipped. Every request's
    path and Range header is recorded in `requests`.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        server: Server = self.server
        name = self.path.lstrip("/")
        server.requests.append((name, self.headers.get("Range")))
        if name not in server.files:
            self.send_error(404)
            return
        data = server.files[name]
        if name in server.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in server.drop_after:
            self.wfile.write(body[: server.drop_after.pop(name) - start])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    server = Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[bytes, dict]:
    """A randomly initialised `resnet_test` in torchvision's layout, as safetensors bytes,
    and the variables that converting that file directly gives."""
    model = create_model(MODEL)
    # Random values of the model's shapes, only traced (much faster than running `init`):
    # kernels scaled by their fan-in and BatchNorm scales near 1, so the logits depend on the
    # image and stay moderate; positive BatchNorm variances.
    example = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), example))
    rng = np.random.default_rng(0)

    def sample(path, leaf):
        if path[-1].key in ("var", "scale"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
        return (scale * rng.normal(size=leaf.shape)).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(sample, shapes)
    path = tmp_path_factory.mktemp("checkpoint") / FILENAME
    safetensors_numpy.save_file(convert.to_torch(MODEL, variables), str(path))
    return path.read_bytes(), convert.from_torch(MODEL, convert.load_state_dict(path))


@pytest.fixture
def registry(monkeypatch, tmp_path, server, checkpoint):
    """An empty in-process registry, a fresh cache, and the checkpoint on the server."""
    monkeypatch.setattr(weights, "_REGISTERED", {})
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    for name in (weights.OFFLINE_ENV, weights.MIRROR_ENV, weights.REGISTRY_ENV):
        monkeypatch.delenv(name, raising=False)
    data, _ = checkpoint
    server.files[FILENAME] = data
    return types.SimpleNamespace(
        cache=tmp_path / "cache", sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )


def make_entry(server, sha256, tag=TAG, filename=FILENAME) -> weights.Weights:
    return weights.Weights(MODEL, tag, f"{server.url}/{filename}", sha256, "torchvision")


def flat(tree) -> dict:
    return traverse_util.flatten_dict(dict(tree))


def assert_same_variables(actual, expected):
    actual, expected = flat(actual), flat(expected)
    assert set(actual) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg="/".join(key))


def test_create_model_downloads_verifies_and_converts(server, registry, checkpoint):
    weights.register(make_entry(server, registry.sha256))
    model, variables = create_model(MODEL, pretrained=TAG)

    _, direct = checkpoint
    assert_same_variables(variables, direct)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.apply(variables, images), model.apply(direct, images))
    assert sorted(p.name for p in registry.cache.iterdir()) == [FILENAME, FILENAME + ".lock"]
    assert server.requests == [(FILENAME, None)]

    # Cached: `MODEL@TAG` and the file itself load again without the server.
    assert_same_variables(weights.load(MODEL, f"{MODEL}@{TAG}"), direct)
    assert_same_variables(weights.load(MODEL, str(registry.cache / FILENAME)), direct)
    assert len(server.requests) == 1


def test_an_interrupted_download_resumes_where_it_stopped(server, registry, tmp_path):
    half = registry.size // 2
    server.drop_after[FILENAME] = half
    url, path = f"{server.url}/{FILENAME}", tmp_path / "file.safetensors"
    with pytest.raises(weights.DownloadError, match=r"interrupted.*run again to resume"):
        weights.download(url, path, registry.sha256, retries=0)
    part = tmp_path / "file.safetensors.part"
    assert part.stat().st_size == half and not path.exists()

    weights.download(url, path, registry.sha256)
    assert server.requests == [(FILENAME, None), (FILENAME, f"bytes={half}-")]
    assert weights.sha256_of(path) == registry.sha256 and not part.exists()

    # Within one call, the retries resume by themselves.
    server.drop_after[FILENAME] = half
    server.requests.clear()
    weights.fetch(make_entry(server, registry.sha256), cache_dir=tmp_path / "again")
    assert server.requests == [(FILENAME, None), (FILENAME, f"bytes={half}-")]
    assert weights.sha256_of(tmp_path / "again" / FILENAME) == registry.sha256


def test_a_corrupted_download_is_deleted_and_reported(server, registry):
    server.corrupt.add(FILENAME)
    entry = make_entry(server, registry.sha256)
    corrupt = bytearray(server.files[FILENAME])
    corrupt[0] ^= 0xFF
    actual = hashlib.sha256(corrupt).hexdigest()
    with pytest.raises(weights.ChecksumError) as error:
        weights.fetch(entry, progress=False)
    message = str(error.value)
    assert entry.url in message and registry.sha256 in message and actual in message
    assert not (registry.cache / FILENAME).exists()
    assert not (registry.cache / (FILENAME + ".part")).exists()

    # A cached file damaged later is caught on the next load, and deleted too.
    server.corrupt.clear()
    path = weights.fetch(entry)
    path.write_bytes(bytes(corrupt))
    with pytest.raises(weights.ChecksumError, match=f"expected {registry.sha256}"):
        weights.fetch(entry)
    assert not path.exists()


def test_offline_mode_names_the_file_its_url_and_where_to_put_it(server, registry, monkeypatch):
    entry = make_entry(server, registry.sha256)
    where = re.escape(str(registry.cache / FILENAME))
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(entry.url)} and put it at {where}$"):
        weights.fetch(entry, offline=True)
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    with pytest.raises(FileNotFoundError, match=rf"offline: {MODEL}@{TAG} needs {FILENAME};"):
        weights.fetch(entry)
    assert server.requests == []
    # Once the file is where the message says, offline loading works.
    (registry.cache).mkdir()
    (registry.cache / FILENAME).write_bytes(server.files[FILENAME])
    assert weights.fetch(entry) == registry.cache / FILENAME


def test_torchvision_style_hash_prefix(server, registry):
    # torchvision publishes NAME-<first hex digits of the sha256>.pth; torch.hub checks that.
    prefix = registry.sha256[:8]
    name = f"resnet_test-{prefix}.safetensors"
    server.files[name] = server.files[FILENAME]
    weights.fetch(make_entry(server, prefix, filename=name), progress=False)

    wrong = format(int(prefix, 16) ^ 1, "08x")
    server.files[f"resnet_test-{wrong}.safetensors"] = server.files[FILENAME]
    entry = make_entry(server, wrong, tag="test:wrong", filename=f"resnet_test-{wrong}.safetensors")
    with pytest.raises(weights.ChecksumError, match=f"expected {wrong}, got {registry.sha256}"):
        weights.fetch(entry, progress=False)


def test_no_published_hash_warns_and_says_so(server, registry):
    with pytest.warns(weights.UnverifiedWeightsWarning, match="no published hash for http"):
        weights.fetch(make_entry(server, None), progress=False)


def make_task(**overrides) -> types.SimpleNamespace:
    """The parts of a trainer task that `load_pretrained` reads."""
    images = np.zeros((1, 32, 32, 3), np.float32)
    return types.SimpleNamespace(
        model=create_model(MODEL, **overrides),
        model_name=MODEL,
        model_overrides=overrides,
        init_inputs=lambda: (images,),
    )


def test_init_from_takes_a_tag(server, registry, checkpoint):
    weights.register(make_entry(server, registry.sha256))
    _, direct = checkpoint
    task = make_task(num_classes=10)
    fresh = nn.unbox(task.model.init(jax.random.PRNGKey(1), *task.init_inputs()))
    for init_from in (TAG, f"{MODEL}@{TAG}"):
        assert_same_variables(load_pretrained(init_from, task, fresh), direct)

    # Another class count: the published body under a fresh head.
    task = make_task(num_classes=5)
    fresh = nn.unbox(task.model.init(jax.random.PRNGKey(1), *task.init_inputs()))
    loaded = flat(load_pretrained(TAG, task, fresh))
    np.testing.assert_array_equal(
        loaded["params", "fc", "kernel"], flat(fresh)["params", "fc", "kernel"]
    )
    np.testing.assert_array_equal(
        loaded["params", "conv1", "kernel"], flat(direct)["params", "conv1", "kernel"]
    )

    with pytest.raises(
        KeyError, match=r"resnet_test has no weights 'test:tinny'; it has: test:tiny"
    ):
        load_pretrained("test:tinny", task, fresh)
    with pytest.raises(ValueError, match="weights vgg16@x are for vgg16, not resnet_test"):
        load_pretrained("vgg16@x", task, fresh)


def test_classify_command_with_a_tag_through_a_mirror(server, registry, tmp_path, checkpoint):
    # A registry file declares the weights at a host that does not exist; the mirror variable
    # sends the download to the local server instead. The entry's own normalisation and crop,
    # far from ImageNet's defaults, must be the ones applied.
    entry = dataclasses.replace(
        make_entry(server, registry.sha256),
        url=f"https://weights.invalid/x/{FILENAME}",
        mean=(0.2, 0.7, 0.3),
        std=(0.6, 0.3, 0.9),
        crop_fraction=0.6,
    )
    (tmp_path / "registry.json").write_text(json.dumps([dataclasses.asdict(entry)]))
    image = tmp_path / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    env = {
        **__import__("os").environ,
        weights.CACHE_ENV: str(registry.cache),
        weights.MIRROR_ENV: server.url + "/",
        weights.REGISTRY_ENV: str(tmp_path / "registry.json"),
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, "-m", "jaxmm.classify", f"--weights={MODEL}@{TAG}", "--size=32"]
    done = subprocess.run(
        [*command, "--top=3", str(image)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert server.requests == [(FILENAME, None)]

    from jaxmm import classify

    _, direct = checkpoint
    view = classify.load_image(image, 32, entry.mean, entry.std, entry.crop_fraction)
    logits = np.asarray(create_model(MODEL).apply(direct, view[None]))[0]
    probabilities = np.asarray(jax.nn.softmax(logits))
    top = np.argsort(-probabilities)[:3]
    assert np.all(np.diff(probabilities[top]) < -1e-3)  # a well-defined order to compare
    printed = re.findall(r"([\d.]+)%  class (\d+)", done.stdout)
    assert [int(index) for _, index in printed] == list(top)
    # Printed with two decimals of a percent.
    np.testing.assert_allclose([float(p) for p, _ in printed], 100 * probabilities[top], atol=0.006)


def test_resolve_tells_tags_from_paths(server, registry, tmp_path):
    weights.register(make_entry(server, registry.sha256))
    assert weights.resolve(TAG, MODEL).spec == f"{MODEL}@{TAG}"
    assert weights.resolve(f"{MODEL}@{TAG}").tag == TAG
    assert weights.resolve(str(tmp_path / "model.pth"), MODEL) is None
    folder = tmp_path / "run@2"
    folder.mkdir()
    assert weights.resolve(str(folder), MODEL) is None  # an existing path with '@' is a path
    with pytest.raises(KeyError, match="it has: torchvision:IMAGENET1K_V1, torchvision:IMAGE"):
        weights.resolve("torchvision:IMAGENET1K_V9", "resnet50")
    with pytest.raises(FileNotFoundError, match=r"'nothing' is neither a weights tag of resnet50"):
        weights.load("resnet50", "nothing")
    with pytest.raises(ValueError, match="already registered"):
        weights.register(make_entry(server, registry.sha256))
    with pytest.raises(ValueError, match="sha256 must be 8 to 64 lower-case hex"):
        weights.Weights(MODEL, "x", "https://a/b.pth", "ABC")


# The entries that were published without a hash that could be found (timm's hub files).
UNHASHED = {"vit_b16@timm:augreg2_in21k_ft_in1k", "swin_t@timm:ms_in1k"}


@pytest.mark.parametrize("entry", weights._BUILTIN, ids=lambda e: e.spec)
def test_registry_entry_form(entry):
    assert entry.url.startswith("https://")
    assert entry.model in list_models()
    assert entry.converter == weights.converter_of(entry.model)
    assert entry.filename.endswith((".pth", ".pt", ".safetensors"))
    if entry.sha256 is None:
        assert entry.spec in UNHASHED
    elif len(entry.sha256) == 64:
        # OpenAI's URLs carry the full digest as the folder name (openai/CLIP clip/clip.py).
        assert entry.url.split("/")[-2] == entry.sha256
    else:
        # torchvision's file names carry a prefix of it, as torch.hub's HASH_REGEX reads it.
        assert re.search(r"-([a-f0-9]*)\.", entry.filename).group(1) == entry.sha256
        assert len(entry.sha256) >= 8
    assert weights.get(entry.model, entry.tag) is entry


@pytest.mark.parametrize("source", ["openai", "torchvision", "timm"])
def test_registry_agrees_with_the_publishers_packages(source):
    """URLs (so hashes) and evaluation views as the publishers' own packages record them."""
    entries = [e for e in weights._BUILTIN if e.tag.partition(":")[0] == source]
    assert entries
    if source == "openai":
        pretrained = pytest.importorskip("open_clip.pretrained", reason="needs open_clip")
        names = {"clip_vit_b32": "ViT-B-32", "clip_vit_b16": "ViT-B-16", "clip_vit_l14": "ViT-L-14"}
        names |= {"clip_rn50": "RN50", "clip_rn101": "RN101"}
        for entry in entries:
            assert pretrained.get_pretrained_cfg(names[entry.model], "openai")["url"] == entry.url
    elif source == "torchvision":
        models = pytest.importorskip("torchvision.models", reason="needs torchvision")
        enums = {"resnet18": "ResNet18", "resnet50": "ResNet50", "mobilenet_v2": "MobileNet_V2"}
        enums |= {"vgg16": "VGG16", "alexnet": "AlexNet"}
        for entry in entries:
            enum = f"{enums[entry.model]}_Weights.{entry.tag.removeprefix('torchvision:')}"
            published = models.get_weight(enum)
            assert published.url == entry.url
            view = published.transforms.keywords
            crop = view["crop_size"] / view.get("resize_size", 256)
            assert entry.crop_fraction == pytest.approx(crop)
    else:
        timm = pytest.importorskip("timm", reason="needs timm")
        for entry in entries:
            name = entry.filename.removesuffix(".safetensors")
            config = timm.models.get_pretrained_cfg(name).to_dict()
            assert config["hf_hub_id"].rstrip("/") == f"timm/{name}"
            assert entry.url == f"https://huggingface.co/timm/{name}/resolve/main/model.safetensors"
            assert (entry.mean, entry.std) == (config["mean"], config["std"])
            assert entry.crop_fraction == config["crop_pct"]


def test_registry_covers_the_published_families():
    specs = set(weights.list_pretrained())
    for model in ("clip_vit_b32", "clip_vit_b16", "clip_vit_l14", "clip_rn50", "clip_rn101"):
        assert f"{model}@openai" in specs
    for model in ("resnet50", "mobilenet_v2", "vgg16", "alexnet"):
        assert f"{model}@torchvision:IMAGENET1K_V1" in specs
    assert UNHASHED <= specs
    assert len({e.filename for e in weights._BUILTIN}) == len(weights._BUILTIN)


def test_classify_refuses_a_model_without_classifier_before_downloading(registry, monkeypatch):
    from jaxmm import classify

    # Offline: a download attempt would raise FileNotFoundError rather than the usage error.
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    with pytest.raises(SystemExit):
        classify.main(["--weights=clip_vit_b32@openai", "photo.jpg"])
    with pytest.raises(SystemExit):
        classify.main(["--weights=openai", "photo.jpg"])  # no --model, no MODEL@


def test_a_whole_part_file_left_by_a_stopped_process_is_kept(server, registry, tmp_path):
    # The process stopped after the last byte, before the rename: the server answers the
    # resume request with 416 (nothing left) and the part is verified and used as it is.
    path = tmp_path / FILENAME
    (tmp_path / (FILENAME + ".part")).write_bytes(server.files[FILENAME])
    weights.download(f"{server.url}/{FILENAME}", path, registry.sha256, progress=False)
    assert server.requests == [(FILENAME, f"bytes={registry.size}-")]
    assert weights.sha256_of(path) == registry.sha256


def test_a_bad_registry_file_is_named(registry, monkeypatch, tmp_path):
    zoo = tmp_path / "zoo.json"
    zoo.write_text(json.dumps([{"model": MODEL, "tag": "x", "url": "https://a/b.pth"}]))
    monkeypatch.setenv(weights.REGISTRY_ENV, str(zoo))
    with pytest.raises(
        ValueError, match=rf"JAXMM_WEIGHTS_REGISTRY={re.escape(str(zoo))}: .*sha256"
    ):
        weights.list_pretrained()
