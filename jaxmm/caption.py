"""Caption images with a trained captioner: `python -m jaxmm.caption`.

    python -m jaxmm.caption --workdir=runs/caption_small image.png photo.jpg
    python -m jaxmm.caption --workdir=runs/caption_small --beam_size=1 image.png   # greedy
    python -m jaxmm.caption --workdir=runs/caption_small --top_p=0.9 image.png     # sampled

Prints one line per image, `PATH<TAB>caption`. `--workdir` is a run of the captioning task
(`configs/caption_small.py`, `configs/caption_coco.py`): its `config.json`, `tokenizer.json`
and newest checkpoint. Images get the run's evaluation view (central square, resized to the
run's image size, its normalisation). Beam search by default (`--beam_size=3`, GNMT length
penalty `--length_penalty`); `--beam_size=1` is greedy search; `--top_p` samples from the
nucleus instead (`--temperature`, `--seed`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxmm import cli
from jaxmm.classify import load_image
from jaxmm.data.tokenizer import Tokenizer
from jaxmm.generate import make_generate
from jaxmm.models import create_model
from jaxmm.train.caption_task import captioner_overrides
from jaxmm.train.pretrained import load_variables
from jaxmm.train.task_common import TOKENIZER_FILE


def load_run(workdir: str | pathlib.Path) -> tuple[ConfigDict, Tokenizer]:
    """The config and tokenizer of the captioning run in `workdir`.

    Raises:
        FileNotFoundError: `workdir` or its `config.json`/`tokenizer.json` is missing.
        ValueError: the run is not a captioning run.
    """
    workdir = pathlib.Path(workdir).expanduser()
    if not workdir.is_dir():
        raise FileNotFoundError(f"--workdir: {workdir} is not a folder")
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"--workdir: {workdir} has no config.json; is it a jaxmm run?")
    config = ConfigDict(json.loads(config_file.read_text()))
    if config.get("task") != "captioning":
        raise ValueError(
            f"--workdir: {workdir} is a {config.get('task', 'contrastive')!r} run, not a "
            "captioning run"
        )
    return config, Tokenizer.load(workdir / TOKENIZER_FILE)


def main(argv: Sequence[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--workdir", required=True, help="a captioning run folder")
    parser.add_argument("--beam_size", type=int, default=3, help="1: greedy search")
    parser.add_argument("--length_penalty", type=float, default=0.6, help="GNMT's alpha")
    parser.add_argument(
        "--max_length", type=int, default=0, help="tokens with SOT; 0: the run's context length"
    )
    parser.add_argument("--top_p", type=float, default=0.0, help="> 0: nucleus sampling")
    parser.add_argument("--temperature", type=float, default=1.0, help="for --top_p")
    parser.add_argument("--seed", type=int, default=0, help="for --top_p")
    args = parser.parse_args(argv)

    missing = [path for path in args.images if not pathlib.Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    config, tokenizer = load_run(args.workdir)
    context_length = config.data.context_length
    max_length = args.max_length or context_length
    if not 2 <= max_length <= context_length:
        raise ValueError(f"--max_length must be in [2, {context_length}], got {max_length}")
    if args.top_p < 0 or args.top_p > 1:
        raise ValueError(f"--top_p must be in (0, 1] (or 0: off), got {args.top_p}")
    name, overrides = captioner_overrides(config, tokenizer.vocab_size)
    model = create_model(name, **overrides)
    variables = load_variables(args.workdir, None)  # the newest checkpoint, as saved
    generate = make_generate(
        model,
        max_length=max_length,
        sot_id=tokenizer.sot_id,
        eot_id=tokenizer.eot_id,
        beam_size=args.beam_size,
        length_penalty=args.length_penalty,
        top_p=args.top_p,
        temperature=args.temperature,
    )
    data = config.data
    images = np.stack(
        [
            load_image(
                path, data.image_size, data.mean, data.std, data.get("eval_crop_fraction", 1.0)
            )
            for path in args.images
        ]
    )
    tokens = np.asarray(generate(variables, images, jax.random.PRNGKey(args.seed)))
    captions = [tokenizer.decode(row) for row in tokens]
    for path, caption in zip(args.images, captions, strict=True):
        print(f"{path}\t{caption}")
    return captions


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
