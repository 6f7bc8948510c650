"""Pretrained weights by name: published PyTorch checkpoints, downloaded, checked, converted.

    from jaxmm.models import create_model
    model, variables = create_model("resnet50", pretrained="torchvision:IMAGENET1K_V2")
    variables = jaxmm.weights.load("clip_vit_b32", "openai")

A *tag* names one published checkpoint of one registry model: `openai` (OpenAI's CLIP
releases), `torchvision:IMAGENET1K_V1` (torchvision's weight enum names), `timm:ms_in1k`
(timm's pretrained tags). Where nothing else says which model, `MODEL@TAG` names both
(`resnet50@torchvision:IMAGENET1K_V2`). The same spelling works in
`create_model(name, pretrained=...)`, `--config.init_from=...` and
`python -m jaxmm.classify --weights=...`; `list_pretrained()` lists every `MODEL@TAG`.

Each registry entry records the publisher's URL, the SHA-256 the publisher gives (OpenAI's
URLs carry the whole digest; torchvision's file names carry its first hex digits, checked as
a prefix the way `torch.hub` does; None where no hash is published, which loads with an
`UnverifiedWeightsWarning`), and the `jaxmm.convert` layout the file is in.

Files are kept in `$JAXMM_CACHE` (default `~/.cache/jaxmm`) under the entry's file name. A
download goes to `NAME.part` and is renamed only once its hash checks out, so the cache never
holds a torn or unverified file under the real name; an interrupted transfer resumes from the
`.part` file (an HTTP Range request) on the next attempt; a file whose hash does not match is
deleted and reported with the URL and both digests. Cached files are hashed again on every
load (OpenAI's loader does the same), so a file damaged on disk is caught. Processes sharing
a cache (the hosts of a multi-process run) take turns through a lock file beside it.

Environment variables:
    JAXMM_CACHE: the cache folder.
    JAXMM_OFFLINE: `1` never downloads; a file missing from the cache is an error naming its
        URL and the path to put it at.
    JAXMM_WEIGHTS_MIRROR: a base URL that replaces every publisher's: files are fetched from
        `MIRROR/FILENAME` (a copy of a cache folder served over HTTP, or a `file://` folder),
        for machines that only see an internal server. Hashes are checked as usual.
    JAXMM_WEIGHTS_REGISTRY: a JSON file holding a list of extra entries (objects with the
        fields of `Weights`), e.g. an internal model zoo; `register()` does the same in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import pathlib
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

from jaxmm.data.image_ops import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

CACHE_ENV = "JAXMM_CACHE"
OFFLINE_ENV = "JAXMM_OFFLINE"
MIRROR_ENV = "JAXMM_WEIGHTS_MIRROR"
REGISTRY_ENV = "JAXMM_WEIGHTS_REGISTRY"

# timm's ViT weights trained with Inception-style normalisation (timm's IMAGENET_INCEPTION_*).
_HALF = (0.5, 0.5, 0.5)
_HEX = re.compile(r"[0-9a-f]{8,64}")
_CHUNK = 1 << 20
# Buffers some timm exports still hold although the model recomputes them (timm's own
# `checkpoint_filter_fn` drops them before loading; jaxmm derives both from the input size).
_DERIVED_BUFFERS = {"timm": ("relative_position_index", "attn_mask")}


class DownloadError(OSError):
    """A file could not be fetched (unreachable server, HTTP error, interrupted transfer)."""


class ChecksumError(DownloadError):
    """A file's SHA-256 differs from the published one (the file has been deleted)."""


class UnverifiedWeightsWarning(UserWarning):
    """Weights loaded from a file whose publisher gives no hash to check it against."""


@dataclasses.dataclass(frozen=True)
class Weights:
    """One published checkpoint of one registry model.

    Attributes:
        model: the `jaxmm.models` registry name the checkpoint fits.
        tag: its name among the model's checkpoints, `SOURCE:NAME` or a bare source (`openai`).
        url: where the publisher serves the file.
        sha256: the publisher's SHA-256 of the file: all 64 hex digits, or a prefix of at
            least 8 (torchvision's file names); None when none is published.
        converter: the `jaxmm.convert` layout the file is in (`torchvision`, `timm`,
            `open_clip`); None means the one `jaxmm.convert.from_torch` uses for `model`.
        filename: the name in the cache (and on a mirror); default the URL's last component.
        mean: per-channel mean the weights were trained with (RGB, 0..1 images).
        std: per-channel standard deviation, as `mean`.
        crop_fraction: the central crop of the evaluation view (torchvision's crop / resize,
            timm's `crop_pct`).
    """

    model: str
    tag: str
    url: str
    sha256: str | None
    converter: str | None = None
    filename: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_fraction: float = 0.875

    def __post_init__(self):
        if not self.filename:
            name = pathlib.PurePosixPath(urllib.parse.urlparse(self.url).path).name
            object.__setattr__(self, "filename", name)
        if not self.filename or "/" in self.filename or self.filename.startswith("."):
            raise ValueError(f"weights {self.spec}: bad cache file name {self.filename!r}")
        if self.sha256 is not None and not _HEX.fullmatch(self.sha256):
            raise ValueError(
                f"weights {self.spec}: sha256 must be 8 to 64 lower-case hex digits or None, "
                f"got {self.sha256!r}"
            )
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))

    @property
    def spec(self) -> str:
        """`MODEL@TAG`, the name that needs no other context."""
        return f"{self.model}@{self.tag}"


def _openai(model: str, digest: str, filename: str) -> Weights:
    # OpenAI's release URLs put the file's full SHA-256 in the path (openai/CLIP clip/clip.py).
    url = f"https://openaipublic.azureedge.net/clip/models/{digest}/{filename}"
    # The evaluation view resizes the short side to the input size and crops it: the whole square.
    return Weights(
        model, "openai", url, digest, "open_clip", mean=CLIP_MEAN, std=CLIP_STD, crop_fraction=1.0
    )


def _torchvision(model: str, version: str, filename: str, resize: int = 256) -> Weights:
    # torchvision names files NAME-HASHPREFIX.pth; `torch.hub` checks that prefix of the SHA-256
    # (its HASH_REGEX); the evaluation view resizes to `resize` and crops 224.
    prefix = re.search(r"-([0-9a-f]{8,})\.", filename).group(1)
    url = f"https://download.pytorch.org/models/{filename}"
    return Weights(
        model, f"torchvision:{version}", url, prefix, "torchvision", crop_fraction=224 / resize
    )


def _timm(model: str, timm_name: str, **view: Any) -> Weights:
    # timm's weights live on the Hugging Face hub as `timm/NAME.TAG/model.safetensors`; no
    # hash for them is recorded here (see the README), so they load unverified, with a warning.
    architecture, tag = timm_name.split(".", 1)
    url = f"https://huggingface.co/timm/{timm_name}/resolve/main/model.safetensors"
    return Weights(
        model, f"timm:{tag}", url, None, "timm", filename=f"{timm_name}.safetensors", **view
    )


_BUILTIN: tuple[Weights, ...] = (
    _openai(
        "clip_vit_b32",
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        "ViT-B-32.pt",
    ),
    _openai(
        "clip_vit_b16",
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        "ViT-B-16.pt",
    ),
    _openai(
        "clip_vit_l14",
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        "ViT-L-14.pt",
    ),
    _openai(
        "clip_rn50",
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        "RN50.pt",
    ),
    _openai(
        "clip_rn101",
        "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
        "RN101.pt",
    ),
    _torchvision("resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth"),
    _torchvision("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth"),
    _torchvision("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", resize=232),
    _torchvision("mobilenet_v2", "IMAGENET1K_V1", "mobilenet_v2-b0353104.pth"),
    _torchvision("mobilenet_v2", "IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth", resize=232),
    _torchvision("vgg16", "IMAGENET1K_V1", "vgg16-397923af.pth"),
    _torchvision("alexnet", "IMAGENET1K_V1", "alexnet-owt-7be5be79.pth"),
    _timm(
        "vit_b16",
        "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        mean=_HALF,
        std=_HALF,
        crop_fraction=0.9,
    ),
    _timm("swin_t", "swin_tiny_patch4_window7_224.ms_in1k", crop_fraction=0.9),
)
_REGISTERED: dict[tuple[str, str], Weights] = {}


def register(entry: Weights, *, replace: bool = False) -> None:
    """Adds `entry` to the registry of this process.

    Raises:
        ValueError: `entry.model` already has `entry.tag` (unless `replace`).
    """
    if not replace and (entry.model, entry.tag) in _entries():
        raise ValueError(f"weights {entry.spec} are already registered")
    _REGISTERED[(entry.model, entry.tag)] = entry


def _registry_file_entries() -> list[Weights]:
    path = os.environ.get(REGISTRY_ENV)
    if not path:
        return []
    try:
        rows = json.loads(pathlib.Path(path).expanduser().read_text())
        if not isinstance(rows, list):
            raise TypeError("expected a JSON list of objects")
        return [Weights(**row) for row in rows]
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{REGISTRY_ENV}={path}: {err}") from None


def _entries() -> dict[tuple[str, str], Weights]:
    """Built-in entries, then those of `$JAXMM_WEIGHTS_REGISTRY`, then `register()`ed ones."""
    entries = {(e.model, e.tag): e for e in _BUILTIN}
    entries.update({(e.model, e.tag): e for e in _registry_file_entries()})
    entries.update(_REGISTERED)
    return entries


def list_pretrained(model: str | None = None) -> list[str]:
    """Every registered `MODEL@TAG`, or only `model`'s, sorted."""
    return sorted(e.spec for e in _entries().values() if model is None or e.model == model)


def get(model: str, tag: str) -> Weights:
    """The entry for `model`'s weights `tag`.

    Raises:
        KeyError: no such entry (the message lists the model's tags, or the models with any).
    """
    entries = _entries()
    if (model, tag) in entries:
        return entries[(model, tag)]
    tags = sorted(t for m, t in entries if m == model)
    if tags:
        raise KeyError(f"{model} has no weights {tag!r}; it has: {', '.join(tags)}")
    models = sorted({m for m, _ in entries})
    raise KeyError(f"no pretrained weights for {model!r}; models with some: {', '.join(models)}")


def resolve(spec: str, model: str | None = None) -> Weights | None:
    """The entry `spec` names, or None when `spec` is a path rather than a tag.

    `spec` is `MODEL@TAG`, or, with `model` given, a bare `TAG` of it. A registered tag wins
    over a file or folder of the same name (write `./openai` for the folder); an existing path
    containing `@` stays a path.

    Raises:
        KeyError: `spec` looks like a tag (`MODEL@TAG`, or `SOURCE:NAME` that is not a path)
            but none is registered.
        ValueError: `MODEL@TAG` names another model than `model`.
    """
    exists = pathlib.Path(spec).expanduser().exists()
    if "@" in spec and not exists:
        named, tag = spec.split("@", 1)
        if model is not None and named != model:
            raise ValueError(f"weights {spec} are for {named}, not {model}")
        return get(named, tag)
    if model is not None:
        entry = _entries().get((model, spec))
        if entry is not None:
            return entry
        if ":" in spec and not exists:
            get(model, spec)  # raises, listing the model's tags
    return None


def default_cache_dir() -> pathlib.Path:
    """`$JAXMM_CACHE`, else `~/.cache/jaxmm`."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or "~/.cache/jaxmm").expanduser()


def offline_from_env() -> bool:
    """Whether `$JAXMM_OFFLINE` asks for no downloads (`1`, `true`, `yes`, `on`)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def source_url(entry: Weights) -> str:
    """Where `entry` is fetched from: its URL, or `$JAXMM_WEIGHTS_MIRROR/FILENAME`."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(entry.filename)}"
    return entry.url


def sha256_of(path: str | pathlib.Path) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | pathlib.Path, sha256: str | None, url: str) -> None:
    """Checks `path` against the published `sha256` (a full digest or a prefix of one).

    A file that fails is deleted, so it is never used or mistaken for a good one. Without a
    published hash this warns (`UnverifiedWeightsWarning`) and accepts the file.

    Raises:
        ChecksumError: the digests differ (the message names the URL, both digests and the
            deleted file).
    """
    path = pathlib.Path(path)
    if sha256 is None:
        warnings.warn(
            f"no published hash for {url}: {path.name} is not verified",
            UnverifiedWeightsWarning,
            stacklevel=3,
        )
        return
    actual = sha256_of(path)
    # torchvision publishes only a prefix (`torch.hub.download_url_to_file`'s hash_prefix).
    if not actual.startswith(sha256):
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"sha256 mismatch for {url}: expected {sha256}, got {actual}; deleted {path}"
        )


@contextlib.contextmanager
def _lock(path: pathlib.Path) -> Iterator[None]:
    """An exclusive lock on `path`'s download, shared by the processes using the cache."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent downloads of one file are not coordinated
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Interrupted(Exception):
    """A transfer that stopped early; the `.part` file keeps what arrived."""


def _content_range_start(response: http.client.HTTPResponse) -> tuple[int, int | None]:
    """(first byte, total size) from a 206 response's `Content-Range: bytes A-B/TOTAL`."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match:
        return -1, None
    total = match.group(2)
    return int(match.group(1)), None if total == "*" else int(total)


def _transfer(url: str, part: pathlib.Path, progress: bool, timeout: float) -> None:
    """Appends the rest of `url` to `part` (all of it when `part` is empty or absent)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "jaxmm"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # The range starts at or past the end: the part already holds the whole file (a
            # process stopped before renaming it). The hash check decides whether it is good.
            return
        raise DownloadError(f"could not download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"could not download {url}: {reason}") from None
    with response:
        total = response.headers.get("Content-Length")
        total = int(total) if total is not None else None
        mode = "wb"
        if offset and response.status == 206:
            start, size = _content_range_start(response)
            if start == offset:
                mode, total = "ab", size
        if mode == "wb":  # the server ignored the range (or none was asked): start over
            offset = 0
        with (
            open(part, mode) as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            try:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(f"{type(err).__name__}: {err}") from None
    size = part.stat().st_size
    if total is not None and size < total:
        # http.client ends a body cut short by a closed connection as if it were complete.
        raise _Interrupted(f"connection closed after {size} of {total} bytes")


def download(
    url: str,
    path: str | pathlib.Path,
    sha256: str | None = None,
    *,
    progress: bool = True,
    retries: int = 2,
    timeout: float = 60.0,
) -> pathlib.Path:
    """Downloads `url` to `path` through `path.part`, resuming what an earlier try left.

    Args:
        url: `http(s)://` or `file://` URL.
        path: the destination; it appears only once complete and verified.
        sha256: the published digest or prefix to check (None: unchecked, with a warning).
        progress: show a tqdm progress bar on stderr.
        retries: further attempts after an interrupted transfer, each resuming (HTTP Range).
        timeout: seconds without data before a read counts as interrupted.

    Returns:
        `path`.

    Raises:
        DownloadError: the server cannot be reached or answers with an error, or the transfer
            stopped `retries + 1` times (the `.part` file is kept to resume from later).
        ChecksumError: the file's hash does not match (it is deleted).
    """
    path = pathlib.Path(path)
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        if path.exists():  # another process finished it while this one waited for the lock
            return path
        for attempt in range(retries + 1):
            try:
                _transfer(url, part, progress, timeout)
                break
            except _Interrupted as err:
                if attempt == retries:
                    raise DownloadError(
                        f"download of {url} interrupted ({err}); run again to resume from {part}"
                    ) from None
        verify(part, sha256, url)
        os.replace(part, path)  # atomic: readers see no file or the whole verified one
    return path


def fetch(
    entry: Weights,
    *,
    cache_dir: str | pathlib.Path | None = None,
    offline: bool | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """The local, verified file of `entry`, downloaded into the cache if missing.

    Args:
        entry: a registry entry (`get`, `resolve`).
        cache_dir: default `default_cache_dir()`.
        offline: never download; default `$JAXMM_OFFLINE`.
        progress: show a progress bar while downloading.

    Raises:
        FileNotFoundError: offline and the file is not in the cache (the message names the URL
            and where to put the file).
        DownloadError, ChecksumError: as `download`; a cached file that fails its check is
            deleted too.
    """
    directory = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = directory / entry.filename
    url = source_url(entry)
    if path.exists():
        verify(path, entry.sha256, url)
        return path
    if offline if offline is not None else offline_from_env():
        raise FileNotFoundError(
            f"offline: {entry.spec} needs {entry.filename}; download {url} and put it at {path}"
        )
    return download(url, path, entry.sha256, progress=progress)


def load_state_dict(entry: Weights, **fetch_options: Any) -> dict[str, Any]:
    """`entry`'s PyTorch state dict (fetched as `fetch` does), without derived buffers."""
    from jaxmm import convert  # imports the model registry, which imports this module lazily

    state_dict = convert.load_state_dict(fetch(entry, **fetch_options))
    converter = entry.converter or converter_of(entry.model)
    derived = _DERIVED_BUFFERS.get(converter, ())
    return {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in derived}


def converter_of(model: str) -> str:
    """The `jaxmm.convert` layout `model` converts from: `torchvision`, `timm`, `open_clip`..."""
    from jaxmm import convert

    return convert._converter(model).__name__.rsplit(".", 1)[-1]


def load(
    model: str,
    spec: str,
    *,
    cache_dir: str | pathlib.Path | None = None,
    offline: bool | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Flax variables of `model` from a registry tag or a checkpoint file.

    Args:
        model: a `jaxmm.models` registry name.
        spec: a tag of `model` (`torchvision:IMAGENET1K_V2`), `MODEL@TAG`, or the path of a
            `.pth`/`.pt`/`.bin`/`.safetensors` file.
        cache_dir, offline, progress: as `fetch`.
        **overrides: model overrides, as `jaxmm.convert.from_torch` takes them.

    Returns:
        `{'params': ..., 'batch_stats': ...}` for `create_model(model, **overrides).apply`.

    Raises:
        KeyError: an unknown tag; FileNotFoundError: neither a tag nor an existing file;
        ValueError: the checkpoint does not fit the model (missing/unexpected/mis-shaped keys).
    """
    from jaxmm import convert

    entry = resolve(spec, model)
    if entry is None:
        path = pathlib.Path(spec).expanduser()
        if not path.is_file():
            tags = ", ".join(t.split("@", 1)[1] for t in list_pretrained(model)) or "none"
            raise FileNotFoundError(
                f"{spec!r} is neither a weights tag of {model} (tags: {tags}) nor a file"
            )
        state_dict, source = convert.load_state_dict(path), str(path)
    else:
        fetch_options = dict(cache_dir=cache_dir, offline=offline, progress=progress)
        state_dict, source = load_state_dict(entry, **fetch_options), entry.spec
    try:
        return convert.from_torch(model, state_dict, **overrides)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
