"""A trained CLIP, loaded for inference: from a jaxmm run folder or from published weights.

    clip = load_clip(workdir="runs/clip_small")  # config.json, tokenizer.json, newest checkpoint
    clip = load_clip(weights="clip_vit_b32@openai")  # downloaded once, OpenAI's tokenizer
    encoders = Encoders(clip, batch_size=64)
    images = np.stack([clip.load_image(path) for path in paths])  # [N, S, S, 3]
    image_embeddings = encoders.images(images)  # [N, E], unit norm
    text_embeddings = encoders.texts(["a photo of a dog"])  # [1, E], unit norm

A run folder brings everything the model needs: its config (the architecture, the image
size, normalisation and evaluation crop, the text context length), the tokenizer learnt for
the run and the newest checkpoint. No dataset is read, so a model trained elsewhere can be
used on any machine, with any number of devices: the checkpoint is restored straight onto
this machine's mesh, whatever mesh wrote it. A weights tag (`MODEL@TAG`, see
`jaxmm.weights`) brings the weights' own normalisation and crop and OpenAI's tokenizer.

The encoders are jitted once for a fixed batch (the last batch is padded), with the batch
split over every device of the mesh's data axes and the variables replicated.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh
from ml_collections import ConfigDict
from PIL import Image, ImageOps

from jaxmm import sharding
from jaxmm import weights as weights_lib
from jaxmm.data import image_ops
from jaxmm.data.tokenizer import Tokenizer, load_clip_tokenizer
from jaxmm.evaluate.image_text import embed_texts
from jaxmm.models import create_model
from jaxmm.models.clip import CLIP, CLIP_VARIANTS
from jaxmm.train.checkpoint import restore_variables
from jaxmm.train.steps import make_encoders
from jaxmm.train.tasks import TOKENIZER_FILE, clip_model_overrides

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
# Top-level CLIP variables that only the text side uses: the image embeddings, and so an index
# of them, do not depend on these (a LiT run's image side never changes).
_TEXT_SIDE = ("text_tower", "text_projection", "logit_scale", "logit_bias")


@dataclasses.dataclass(frozen=True)
class InferenceCLIP:
    """A CLIP model with its variables, tokenizer and image preprocessing.

    Attributes:
        model: the `jaxmm.models.clip.CLIP` module.
        variables: its variables (`{'params': ...}` plus any BatchNorm statistics), replicated
            over `mesh`.
        tokenizer: the tokenizer the text tower was trained with.
        image_size: side S of the square model input.
        mean: per-channel mean of the normalisation (RGB, 0..1 pixels).
        std: per-channel standard deviation of the normalisation.
        crop_fraction: the central square kept before resizing, as a fraction of the shorter
            side (1.0: the whole square, as CLIP evaluates).
        context_length: token rows are `[N, context_length]`.
        mesh: the device mesh the encoders split batches over.
        source: what was loaded, for messages: `RUN (step N)` or `MODEL@TAG`.
        description: the architecture and preprocessing, as JSON; part of `image_fingerprint`.
    """

    model: CLIP
    variables: Any
    tokenizer: Tokenizer
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_fraction: float
    context_length: int
    mesh: Mesh
    source: str
    description: str

    @property
    def embed_dim(self) -> int:
        """E, the width of the embeddings."""
        return self.model.embed_dim

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """`uint8 [H, W, 3]` -> `float32 [S, S, 3]`: central crop, bicubic resize, normalise
        (the evaluation view the model was trained or published with)."""
        box = image_ops.center_crop_box(pixels.shape[0], pixels.shape[1], self.crop_fraction)
        return image_ops.normalize(
            image_ops.crop_resize(pixels, box, self.image_size), self.mean, self.std
        )

    def load_image(self, path: str | pathlib.Path) -> np.ndarray:
        """`float32 [S, S, 3]`: the file at `path` as the model sees it.

        Raises:
            OSError: the file is missing or is not an image PIL can decode (a truncated file
                included).
        """
        return self.preprocess(read_rgb(path))

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """`int32 [N, context_length]` token rows."""
        return self.tokenizer(list(texts), context_length=self.context_length)

    @functools.cached_property
    def image_fingerprint(self) -> str:
        """16 hex digits that change whenever the image embeddings could: the image-side
        variables (their bytes), the architecture and the preprocessing."""
        digest = hashlib.sha256(self.description.encode())
        flat = traverse_util.flatten_dict(dict(self.variables))
        for path in sorted(flat):
            if path[1] in _TEXT_SIDE:  # (collection, top-level module, ...)
                continue
            value = np.asarray(flat[path])
            digest.update(f"{'/'.join(path)}:{value.dtype}:{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        return digest.hexdigest()[:16]


def read_rgb(path: str | pathlib.Path) -> np.ndarray:
    """`uint8 [H, W, 3]`: the image file at `path`, upright (its EXIF orientation applied).

    Raises:
        OSError: missing, unreadable or undecodable (PIL's errors, truncated files included).
    """
    try:
        with Image.open(path) as image:
            # Phone photos store the camera's orientation in EXIF rather than in the pixels.
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (Image.DecompressionBombError, SyntaxError, ValueError) as error:
        # PIL reports some damaged files with these rather than an OSError.
        raise OSError(f"{path}: {error}") from None


def load_clip(
    workdir: str | pathlib.Path | None = None,
    weights: str | None = None,
    *,
    mesh: Mesh | None = None,
) -> InferenceCLIP:
    """Loads a CLIP from a jaxmm run folder or a weights tag (exactly one of the two).

    Args:
        workdir: a jaxmm run folder of a contrastive (CLIP) run: its `config.json`,
            `tokenizer.json` and newest checkpoint are read.
        weights: `MODEL@TAG` of a registered CLIP checkpoint, e.g. `clip_vit_b32@openai`
            (downloaded into the cache once, `jaxmm.weights`).
        mesh: the devices to place the variables on and split batches over; default every
            device on one `data` axis.

    Raises:
        FileNotFoundError: the run folder, its config, tokenizer or checkpoint is missing.
        KeyError: an unknown weights tag (the message lists the model's tags).
        ValueError: neither or both sources, a run or weights that are not a CLIP.
    """
    if (workdir is None) == (weights is None):
        raise ValueError("give exactly one of workdir (a jaxmm run) or weights (MODEL@TAG)")
    mesh = mesh or sharding.make_mesh({"data": -1})
    if workdir is not None:
        return _load_run(pathlib.Path(workdir).expanduser(), mesh)
    return _load_weights(weights, mesh)


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the configs wrote (module fields must be hashable)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _load_run(workdir: pathlib.Path, mesh: Mesh) -> InferenceCLIP:
    if not workdir.is_dir():
        raise FileNotFoundError(f"workdir {workdir}: no such folder")
    if not (workdir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"workdir {workdir} is not a jaxmm run folder: no {CONFIG_FILE}")
    config = ConfigDict(_tuples(json.loads((workdir / CONFIG_FILE).read_text())))
    task = config.get("task", "contrastive")
    if task != "contrastive":
        raise ValueError(f"workdir {workdir} is a {task} run, not an image-text (CLIP) one")
    if not (workdir / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"workdir {workdir} has no {TOKENIZER_FILE}")
    tokenizer = Tokenizer.load(workdir / TOKENIZER_FILE)
    name, overrides = clip_model_overrides(config, tokenizer.vocab_size)
    model = create_model(name, **overrides)
    variables, step = restore_variables(workdir / CHECKPOINTS_DIR, mesh)
    data = config.data
    # The text side's settings do not change the image embeddings (see `_TEXT_SIDE`).
    image_side = {key: value for key, value in overrides.items() if key != "text"}
    return _make(
        model=model,
        variables=variables,
        tokenizer=tokenizer,
        image_size=int(data.image_size),
        mean=tuple(data.mean),
        std=tuple(data.std),
        crop_fraction=float(data.get("eval_crop_fraction", 1.0)),
        context_length=int(data.context_length),
        mesh=mesh,
        source=f"{workdir} (step {step})",
        architecture={"model": name, **image_side},
    )


def clip_weights() -> list[str]:
    """Every registered `MODEL@TAG` of a CLIP model."""
    return [spec for spec in weights_lib.list_pretrained() if spec.split("@")[0] in CLIP_VARIANTS]


def _load_weights(spec: str, mesh: Mesh) -> InferenceCLIP:
    entry = weights_lib.resolve(spec)  # KeyError for an unknown MODEL@TAG, before any download
    known = ", ".join(clip_weights())
    if entry is None:
        raise ValueError(f"weights {spec!r}: expected MODEL@TAG; CLIP weights: {known}")
    model = create_model(entry.model)
    if not isinstance(model, CLIP):
        raise ValueError(
            f"weights {spec}: {entry.model} is not a CLIP model; CLIP weights: {known}"
        )
    tokenizer = load_clip_tokenizer()
    if tokenizer.vocab_size > model.text_tower.vocab_size:  # checked before any download
        raise ValueError(
            f"weights {spec}: OpenAI's tokenizer makes {tokenizer.vocab_size} token ids, "
            f"but the text tower of {entry.model} embeds {model.text_tower.vocab_size}"
        )
    variables = jax.device_put(weights_lib.load(entry.model, entry.spec), sharding.replicated(mesh))
    return _make(
        model=model,
        variables=variables,
        tokenizer=tokenizer,
        image_size=_input_size(model, variables),
        mean=tuple(entry.mean),
        std=tuple(entry.std),
        crop_fraction=float(entry.crop_fraction),
        context_length=int(model.text_tower.context_length),
        mesh=mesh,
        source=entry.spec,
        architecture={"model": entry.model},
    )


def _input_size(model: CLIP, variables: Any) -> int:
    """The image side a converted checkpoint was trained at: fixed by ModifiedResNet's field,
    or by the number of ViT positional embeddings, `(S / patch)^2` (plus one for the class
    token, which leaves the integer square root unchanged)."""
    tower = model.image_tower
    if hasattr(tower, "image_size"):
        return int(tower.image_size)
    tokens = variables["params"]["image_tower"]["pos_embed"].shape[-2]
    return math.isqrt(tokens) * tower.patch_size


def _make(*, architecture: dict[str, Any], **fields: Any) -> InferenceCLIP:
    preprocessing = {key: fields[key] for key in ("image_size", "mean", "std", "crop_fraction")}
    description = json.dumps({**architecture, **preprocessing}, sort_keys=True, default=str)
    return InferenceCLIP(description=description, **fields)


class Encoders:
    """Jitted image and text encoders of an `InferenceCLIP`, one compilation each.

    Batches have a fixed size (`batch_size` rounded up to a multiple of the devices on the
    mesh's batch axes), split over those devices; the last batch is padded with copies of
    its final row, so any number of rows reuses the one compiled program.
    """

    def __init__(self, clip: InferenceCLIP, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        devices = clip.mesh.shape["data"] * clip.mesh.shape["fsdp"]
        self.clip = clip
        self.batch_size = -(-batch_size // devices) * devices
        self._encode_image, self._encode_text = make_encoders(clip.model, clip.mesh)
        self._rules = sharding.logical_rules()

    def images(self, images: np.ndarray) -> np.ndarray:
        """`float32 [N, S, S, 3]` preprocessed images -> `float32 [N, E]` unit embeddings."""
        chunks = [np.zeros((0, self.clip.embed_dim), np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = np.asarray(images[start : start + self.batch_size], np.float32)
            valid = len(batch)
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - valid, 0)])
            with jax.set_mesh(self.clip.mesh), nn.logical_axis_rules(self._rules):
                chunks.append(np.asarray(self._encode_image(self.clip.variables, batch))[:valid])
        return np.concatenate(chunks)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """`M` strings -> `float32 [M, E]` unit embeddings."""
        if not texts:
            return np.zeros((0, self.clip.embed_dim), np.float32)
        with jax.set_mesh(self.clip.mesh), nn.logical_axis_rules(self._rules):
            return embed_texts(
                lambda tokens: self._encode_text(self.clip.variables, tokens),
                self.clip.tokenize(texts),
                self.batch_size,
            )
