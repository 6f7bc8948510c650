"""Search a folder of images by text or by example with a CLIP: `python -m jaxmm.search`.

    python -m jaxmm.search --workdir=runs/clip_small --images=shapes/ "a red circle"
    python -m jaxmm.search --weights=clip_vit_b32@openai --images=photos/ \\
        "a dog running on grass" "a beach at sunset" --top_k=5 --grid=hits.png
    python -m jaxmm.search --weights=clip_vit_b32@openai --images=photos/ --image=query.jpg

The model is a jaxmm CLIP run (`--workdir`: its config, tokenizer and newest checkpoint; no
dataset needed) or published CLIP weights (`--weights=MODEL@TAG`, see `jaxmm.weights`). Every
image under `--images` (recursively: .jpg, .jpeg, .png, .webp, .bmp) is embedded once, in
fixed-size batches split over the devices, and the embeddings are kept in an index file
(default `FOLDER/.jaxmm_search_<model fingerprint>.npz`, or `--index`). A later call with the
same model embeds only the files that are new or changed (size or modification time) and
drops the deleted ones. A file that cannot be decoded is skipped with a warning naming it.

Each text (every positional argument is one query) and the `--image` query print the `--top_k`
files with the highest cosine similarity; `--grid=out.png` draws them, one row per query.
Progress and summaries go to stderr, the results to stdout. Bad input (a missing folder or
file, a folder without images, no query, a run without a checkpoint, an unknown weights tag)
is one line `error: ...` and exit status 1.

The index is an `.npz` file (numpy, no pickles): `paths` [N] (POSIX, relative to the folder,
sorted), `sizes` and `mtimes` int64 [N] (bytes, nanoseconds), `embeddings` [N, E] (float16
by default, `--dtype=float32`), `fingerprint` (`InferenceCLIP.image_fingerprint`: the
image-side weights, architecture and preprocessing) and `version`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import pathlib
import sys
import textwrap
import zipfile
from collections.abc import Sequence
from concurrent import futures
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from jaxmm import cli

if TYPE_CHECKING:
    from jaxmm.inference import Encoders, InferenceCLIP

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
INDEX_PREFIX = ".jaxmm_search_"
INDEX_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
# Files decoded at once; decoding releases the GIL, so threads keep the devices fed.
READ_THREADS = min(8, os.cpu_count() or 1)

Hits = list[tuple[str, float]]  # (path relative to the folder, cosine similarity), best first


@dataclasses.dataclass
class Index:
    """Embeddings of a folder's images, with what identifies each file's content.

    Attributes:
        paths: `[N]` POSIX paths relative to the folder, sorted.
        sizes: `int64 [N]` file sizes in bytes when embedded.
        mtimes: `int64 [N]` modification times in nanoseconds when embedded.
        embeddings: `[N, E]` float16 or float32 unit embeddings.
        fingerprint: the `image_fingerprint` of the model that embedded them.
    """

    paths: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    embeddings: np.ndarray
    fingerprint: str

    def save(self, path: pathlib.Path) -> None:
        """Writes the index to `path` whole: a temporary file, then renamed over it."""
        partial = path.with_name(path.name + ".tmp")
        with partial.open("wb") as f:
            np.savez(
                f,
                version=INDEX_VERSION,
                fingerprint=self.fingerprint,
                paths=np.asarray(self.paths, dtype=np.str_),
                sizes=self.sizes.astype(np.int64),
                mtimes=self.mtimes.astype(np.int64),
                embeddings=self.embeddings,
            )
        partial.replace(path)

    @classmethod
    def load(cls, path: pathlib.Path) -> Index:
        """Reads an index written by `save`.

        Raises:
            ValueError: the file is not an index of this version.
        """
        try:
            with np.load(path, allow_pickle=False) as f:
                if int(f["version"]) != INDEX_VERSION:
                    raise ValueError(f"index version {int(f['version'])}, not {INDEX_VERSION}")
                return cls(
                    paths=[str(p) for p in f["paths"]],
                    sizes=f["sizes"],
                    mtimes=f["mtimes"],
                    embeddings=f["embeddings"],
                    fingerprint=str(f["fingerprint"]),
                )
        except (OSError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"not a search index: {error}") from None


@dataclasses.dataclass(frozen=True)
class IndexUpdate:
    """What `update_index` did.

    Attributes:
        path: the index file.
        embedded: files embedded now (new or changed).
        reused: files whose stored embedding still holds.
        dropped: stored files that no longer exist.
        skipped: `(path, reason)` of the files that could not be decoded.
    """

    path: pathlib.Path
    embedded: int
    reused: int
    dropped: int
    skipped: tuple[tuple[str, str], ...]


def scan_images(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    """`{relative POSIX path: (size, mtime_ns)}` of every image file under `folder`, sorted.

    A file whose status cannot be read (a broken link) gets `(-1, -1)`: it is never current,
    and reading it reports why.
    """
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.lower().endswith(IMAGE_SUFFIXES):
                path = pathlib.Path(root, name)
                try:
                    status = path.stat()
                    files[path.relative_to(folder).as_posix()] = (
                        status.st_size,
                        status.st_mtime_ns,
                    )
                except OSError:
                    files[path.relative_to(folder).as_posix()] = (-1, -1)
    return dict(sorted(files.items()))


def default_index_path(folder: pathlib.Path, clip: InferenceCLIP) -> pathlib.Path:
    """`FOLDER/.jaxmm_search_<fingerprint>.npz`: one index per model and folder."""
    return folder / f"{INDEX_PREFIX}{clip.image_fingerprint}.npz"


def _stored(path: pathlib.Path, fingerprint: str, dtype: np.dtype) -> Index | None:
    """The index at `path` if this model wrote it with `dtype` embeddings; else None."""
    if not path.exists():
        return None
    try:
        index = Index.load(path)
    except ValueError as error:
        _warn(f"{path}: {error}; rebuilding it")
        return None
    if index.fingerprint != fingerprint or index.embeddings.dtype != dtype:
        _warn(f"{path} was built by another model or with another --dtype; rebuilding it")
        return None
    return index


def update_index(
    folder: str | pathlib.Path,
    encoders: Encoders,
    index_path: str | pathlib.Path | None = None,
    dtype: str = "float16",
    files: dict[str, tuple[int, int]] | None = None,
) -> tuple[Index, IndexUpdate]:
    """Brings the index of `folder` up to date and returns it.

    Args:
        folder: the image folder (searched recursively).
        encoders: the model's encoders; their batch size is the embedding chunk.
        index_path: the index file; default `default_index_path`.
        dtype: `float16` or `float32`, how embeddings are stored.
        files: `scan_images(folder)`, when the caller has it already.

    Raises:
        ValueError: no image files under `folder`, or none could be decoded.
        OSError: the index cannot be written (the message suggests `--index`).
    """
    folder = pathlib.Path(folder)
    clip = encoders.clip
    store_dtype = np.dtype(DTYPES[dtype])
    files = scan_images(folder) if files is None else files
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    path = pathlib.Path(index_path) if index_path else default_index_path(folder, clip)
    old = _stored(path, clip.image_fingerprint, store_dtype)

    rows: dict[str, tuple[tuple[int, int], np.ndarray]] = {}
    dropped = 0
    if old is not None:
        for i, name in enumerate(old.paths):
            identity = (int(old.sizes[i]), int(old.mtimes[i]))
            if files.get(name) == identity:
                rows[name] = (identity, old.embeddings[i])
            dropped += name not in files
    todo = [name for name in files if name not in rows]
    embedded, skipped = _embed_files(folder, todo, encoders)
    for name, skip_reason in skipped:
        _warn(f"skipped {folder / name}: {skip_reason}")
    rows.update({name: (files[name], e.astype(store_dtype)) for name, e in embedded.items()})
    if not rows:
        raise ValueError(f"none of the {len(files)} image files under {folder} could be decoded")

    names = sorted(rows)
    index = Index(
        paths=names,
        sizes=np.asarray([rows[n][0][0] for n in names], np.int64),
        mtimes=np.asarray([rows[n][0][1] for n in names], np.int64),
        embeddings=np.stack([rows[n][1] for n in names]).astype(store_dtype),
        fingerprint=clip.image_fingerprint,
    )
    if old is None or embedded or names != old.paths:
        try:
            index.save(path)
        except OSError as error:
            raise OSError(f"cannot write the index {path} ({error}); choose --index") from None
    reused = len(rows) - len(embedded)
    return index, IndexUpdate(path, len(embedded), reused, dropped, tuple(skipped))


def _embed_files(
    folder: pathlib.Path, names: list[str], encoders: Encoders
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """`({name: [E] embedding}, [(name, reason)])` for the files `names` under `folder`.

    Reads one batch ahead on a thread pool while the current batch is encoded, so at most
    two batches of images are in memory whatever the folder's size.
    """
    clip, size = encoders.clip, encoders.batch_size
    batches = [names[i : i + size] for i in range(0, len(names), size)]
    embedded: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    if not batches:
        return embedded, skipped
    with (
        futures.ThreadPoolExecutor(READ_THREADS) as pool,
        tqdm(total=len(names), desc="embedding", unit="img", disable=None) as progress,
    ):
        read = lambda batch: [pool.submit(clip.load_image, folder / name) for name in batch]
        pending = read(batches[0])
        for i, batch in enumerate(batches):
            current, pending = pending, read(batches[i + 1]) if i + 1 < len(batches) else []
            images, good = [], []
            for name, image in zip(batch, current, strict=True):
                try:
                    images.append(image.result())
                    good.append(name)
                except OSError as error:
                    skipped.append((name, str(error)))
            if images:
                embedded.update(zip(good, encoders.images(np.stack(images)), strict=True))
            progress.update(len(batch))
    return embedded, skipped


def search(index: Index, queries: np.ndarray, top_k: int) -> list[Hits]:
    """The `top_k` best hits of each query.

    Args:
        index: the folder's index.
        queries: `[Q, E]` unit query embeddings.
        top_k: hits per query (fewer when the index is smaller).

    Returns:
        Per query, `(relative path, cosine similarity)` pairs, best first.
    """
    embeddings = index.embeddings.astype(np.float32)
    # Stored float16 rows are unit vectors only to ~1e-3; scores are exact cosines.
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = np.asarray(queries, np.float32) @ embeddings.T  # [Q, N]
    k = min(top_k, len(index.paths))
    results = []
    for row in scores:
        best = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        best = best[np.argsort(-row[best], kind="stable")]
        results.append([(index.paths[i], float(row[i])) for i in best])
    return results


def write_grid(
    path: str | pathlib.Path, folder: pathlib.Path, results: Sequence[tuple[str, Hits]]
) -> None:
    """A PNG with one row per query: its hits, each titled with score and file name.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from jaxmm.inference import read_rgb

    columns = max(len(hits) for _, hits in results)
    # The figure and its Agg canvas directly: pyplot's global backend state stays untouched.
    figure = Figure(figsize=(1.9 * columns + 0.5, 2.2 * len(results)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(results), columns, squeeze=False)
    for row, (query, hits) in zip(axes, results, strict=True):
        for column, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if column >= len(hits):
                ax.set_axis_off()
                continue
            name, score = hits[column]
            try:
                ax.imshow(read_rgb(folder / name))
            except OSError:  # deleted or damaged since it was indexed
                pass
            ax.set_title(f"{score:.3f}\n{textwrap.shorten(name, 24)}", fontsize=7)
        row[0].set_ylabel(textwrap.fill(query, 24), fontsize=8)
    figure.savefig(path, format="png", dpi=100)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, as every jaxmm command reports bad input (jaxmm.cli), not a usage block.
        raise ValueError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m jaxmm.search",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("queries", nargs="*", metavar="TEXT", help="text queries, one per argument")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--workdir", help="a jaxmm CLIP run folder")
    model.add_argument("--weights", help="published CLIP weights, MODEL@TAG: clip_vit_b32@openai")
    parser.add_argument("--images", required=True, help="the folder to search (recursively)")
    parser.add_argument("--image", help="an image file to query by example")
    parser.add_argument("--top_k", type=int, default=10, help="hits per query (default 10)")
    parser.add_argument("--grid", help="write a PNG grid of the hits here")
    parser.add_argument("--index", help="the index file (default FOLDER/.jaxmm_search_*.npz)")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=64,
        help="images per encoder call, rounded up to a multiple of the devices (default 64)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="index dtype")
    return parser


def _check_arguments(args: argparse.Namespace, folder: pathlib.Path) -> None:
    """The bad input that needs no model, reported before one is loaded."""
    if not folder.exists():
        raise FileNotFoundError(f"--images={folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"--images={folder} is not a folder")
    if not args.queries and not args.image:
        raise ValueError('no query: give a text ("a dog on grass") or --image=FILE')
    if args.image and not pathlib.Path(args.image).expanduser().is_file():
        raise FileNotFoundError(f"--image={args.image}: no such file")
    if args.top_k < 1:
        raise ValueError(f"--top_k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.grid:
        if pathlib.Path(args.grid).suffix.lower() != ".png":
            raise ValueError(f"--grid={args.grid}: the grid is a PNG; name a .png file")
        if importlib.util.find_spec("matplotlib") is None:
            raise ImportError("--grid needs matplotlib: pip install matplotlib")


def main(argv: Sequence[str] | None = None) -> list[tuple[str, Hits]]:
    """Runs the command; returns `(query, hits)` per query, hits relative to the folder."""
    args = _parser().parse_args(argv)
    folder = pathlib.Path(args.images).expanduser()
    _check_arguments(args, folder)
    files = scan_images(folder)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    # Imported here: jax and the model registry take seconds, which bad input need not wait.
    from jaxmm.inference import Encoders, load_clip

    clip = load_clip(workdir=args.workdir, weights=args.weights)
    print(f"model: {clip.source}", file=sys.stderr)
    encoders = Encoders(clip, args.batch_size)
    index, update = update_index(folder, encoders, args.index, args.dtype, files)
    print(
        f"index: {update.path}: {len(index.paths)} images ({update.embedded} embedded, "
        f"{update.reused} reused, {update.dropped} dropped, {len(update.skipped)} skipped)",
        file=sys.stderr,
    )

    queries = list(args.queries)
    embeddings = [encoders.texts(queries)]
    if args.image:
        queries.append(args.image)
        embeddings.append(
            encoders.images(clip.load_image(pathlib.Path(args.image).expanduser())[None])
        )
    results = list(zip(queries, search(index, np.concatenate(embeddings), args.top_k), strict=True))
    for query, hits in results:
        print(query)
        for rank, (name, score) in enumerate(hits, 1):
            print(f"  {rank:3d}  {score:6.3f}  {folder / name}")
    if args.grid:
        labels = list(args.queries) + (
            [f"like {pathlib.Path(args.image).name}"] if args.image else []
        )
        write_grid(
            args.grid,
            folder,
            [(label, hits) for label, (_, hits) in zip(labels, results, strict=True)],
        )
        print(f"grid: {args.grid}", file=sys.stderr)
    return results


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
