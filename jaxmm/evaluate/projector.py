"""Image and text embeddings for TensorBoard's embedding projector, written without TensorFlow.

    from jaxmm.evaluate.projector import write_projector

    write_projector(
        workdir / "tensorboard",  # the folder holding the run's event files
        image_embeddings,  # [N, E]
        text_embeddings,  # [M, E]
        thumbnails,  # uint8 [N, h, w, 3], e.g. the evaluation images before normalisation
        captions,  # M strings: the text of each text embedding
        step,
    )

then `tensorboard --logdir RUN/tensorboard` (with `pip install tensorboard`) shows both
kinds of points in one space under the Projector tab, images as thumbnails, texts as plain
tiles, coloured or labelled by the `kind` and `caption` columns: a picture of how well the
two towers agree (with CLIP's modality gap, the two clouds sit apart).

Files, for each step under `LOGDIR/projector/STEP/` (STEP zero-padded to 8 digits):
- `tensors.tsv`: `N + M` rows (images first, then texts) of `E` tab-separated floats;
- `metadata.tsv`: a header `caption<TAB>kind`, then one row per point (`kind` is `image`
  or `text`; in captions, each run of whitespace, tabs and line breaks included, becomes
  one space);
- `sprite.png`: the thumbnails in row-major order on a square canvas, one square tile per
  point (TensorBoard's projector wants square tiles and at most 8192 px a side: tiles
  shrink to fit, thumbnails are centred on their tile);
- `embedding.pbtxt`: this step's `embeddings { ... }` entry.
`LOGDIR/projector_config.pbtxt` (TensorBoard's `ProjectorConfig` in protobuf text format) is
rebuilt from every step's entry, so each call adds its step and a rewritten step replaces
its earlier files.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

CONFIG_FILE = "projector_config.pbtxt"
PROJECTOR_DIR = "projector"
ENTRY_FILE = "embedding.pbtxt"
MAX_SPRITE_SIDE = 8192  # pixels; TensorBoard's projector rejects larger sprites
TEXT_TILE = 235  # grey level of the tile that stands for a text point


def write_projector(
    logdir: str | pathlib.Path,
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    thumbnails: np.ndarray,
    captions: Sequence[str],
    step: int,
    *,
    image_captions: Sequence[str] | None = None,
) -> pathlib.Path:
    """Writes one step's embeddings for TensorBoard's projector under `logdir`.

    Args:
        logdir: the folder TensorBoard reads the run from (a jaxmm run's `tensorboard/`).
        image_embeddings: `[N, E]` image embeddings.
        text_embeddings: `[M, E]` text embeddings.
        thumbnails: `[N, h, w, 3]` images for the sprite: uint8, or floats in [0, 1].
        captions: `M` strings, the text of each text embedding.
        step: the training step, which names the embedding (`clip step N`) and its folder.
        image_captions: `N` strings labelling the images; default, when `M == N`, the
            caption of the same index (an image and its caption), else `image I`.

    Returns:
        The folder holding this step's files.

    Raises:
        ValueError: shapes that disagree (widths, counts, thumbnails), or a negative step.
    """
    images = np.asarray(image_embeddings, np.float32)
    texts = np.asarray(text_embeddings, np.float32)
    thumbnails = np.asarray(thumbnails)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"embeddings must be [N, E] and [M, E] of one width, got {images.shape} and "
            f"{texts.shape}"
        )
    if len(captions) != len(texts):
        raise ValueError(f"{len(captions)} captions for {len(texts)} text embeddings")
    if thumbnails.ndim != 4 or thumbnails.shape[0] != len(images) or thumbnails.shape[3] != 3:
        raise ValueError(f"thumbnails must be [{len(images)}, h, w, 3], got {thumbnails.shape}")
    if image_captions is None:
        paired = len(captions) == len(images)
        image_captions = captions if paired else [f"image {i}" for i in range(len(images))]
    if len(image_captions) != len(images):
        raise ValueError(f"{len(image_captions)} image captions for {len(images)} images")
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")

    logdir = pathlib.Path(logdir)
    folder = logdir / PROJECTOR_DIR / f"{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "tensors.tsv", np.concatenate([images, texts]), fmt="%.7g", delimiter="\t")
    rows = [("caption", "kind")]
    rows += [(_cell(c), "image") for c in image_captions] + [(_cell(c), "text") for c in captions]
    (folder / "metadata.tsv").write_text("".join(f"{c}\t{k}\n" for c, k in rows), encoding="utf-8")
    sprite, tile = make_sprite(_as_uint8(thumbnails), len(texts))
    Image.fromarray(sprite).save(folder / "sprite.png")

    relative = folder.relative_to(logdir).as_posix()  # TensorBoard resolves from the config
    entry = (
        "embeddings {\n"
        f'  tensor_name: "clip step {step}"\n'
        f'  tensor_path: "{relative}/tensors.tsv"\n'
        f'  metadata_path: "{relative}/metadata.tsv"\n'
        f"  tensor_shape: {len(images) + len(texts)}\n"
        f"  tensor_shape: {images.shape[1]}\n"
        "  sprite {\n"
        f'    image_path: "{relative}/sprite.png"\n'
        f"    single_image_dim: {tile}\n"  # [width, height]
        f"    single_image_dim: {tile}\n"
        "  }\n"
        "}\n"
    )
    (folder / ENTRY_FILE).write_text(entry)
    entries = sorted((logdir / PROJECTOR_DIR).glob(f"*/{ENTRY_FILE}"))
    (logdir / CONFIG_FILE).write_text("".join(path.read_text() for path in entries))
    return folder


def make_sprite(thumbnails: np.ndarray, num_texts: int) -> tuple[np.ndarray, int]:
    """`(uint8 [S, S, 3] sprite, tile side)`: the thumbnails, then `num_texts` plain tiles.

    Tiles fill the square canvas row by row (TensorBoard finds point `i` at row
    `i // per_row`, column `i % per_row`); the unused bottom stays black.

    Args:
        thumbnails: `uint8 [N, h, w, 3]`.
        num_texts: plain tiles to add after the thumbnails.
    """
    count = len(thumbnails) + num_texts
    per_row = max(1, math.ceil(math.sqrt(count)))
    tile = max(thumbnails.shape[1], thumbnails.shape[2]) if len(thumbnails) else 16
    tile = max(1, min(tile, MAX_SPRITE_SIDE // per_row))
    sprite = np.zeros((per_row * tile, per_row * tile, 3), np.uint8)
    for i in range(count):
        top, left = (i // per_row) * tile, (i % per_row) * tile
        if i < len(thumbnails):
            sprite[top : top + tile, left : left + tile] = _square_tile(thumbnails[i], tile)
        else:
            sprite[top : top + tile, left : left + tile] = TEXT_TILE
    return sprite, tile


def _square_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """`uint8 [tile, tile, 3]`: `image` scaled to fit, centred on black."""
    pil = Image.fromarray(image)
    scale = tile / max(pil.width, pil.height)
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    if size != pil.size:
        pil = pil.resize(size, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (tile, tile))
    canvas.paste(pil, ((tile - pil.width) // 2, (tile - pil.height) // 2))
    return np.asarray(canvas)


def _as_uint8(thumbnails: np.ndarray) -> np.ndarray:
    if thumbnails.dtype == np.uint8:
        return thumbnails
    return np.round(np.clip(thumbnails, 0.0, 1.0) * 255).astype(np.uint8)


def _cell(text: str) -> str:
    """A caption as one TSV cell: no tabs or line breaks."""
    return " ".join(str(text).split())
