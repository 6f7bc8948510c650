"""What every task is built from: the model named by the config, and the run's tokenizer
(trained, loaded, or inherited from another run's folder).

Tasks (`jaxmm.train.tasks`, `jaxmm.train.fusion_tasks`, ...) import these rather than each
other, so any task module can be imported first.
"""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxmm.data import pipeline
from jaxmm.data.tokenizer import Tokenizer, load_clip_tokenizer, train_bpe_tokenizer

TOKENIZER_FILE = "tokenizer.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
Evaluator = Callable[[Any], dict[str, float]]  # variables -> metrics


def model_overrides(model_config: ConfigDict) -> tuple[str, dict[str, Any]]:
    """`(registry name, overrides)` from a config's `model` section; dtype names resolved."""
    overrides = model_config.to_dict()
    name = overrides.pop("name")
    for key in ("dtype", "param_dtype"):
        if key in overrides:
            if overrides[key] not in DTYPES:
                raise ValueError(f"model.{key}={overrides[key]!r}; choose from {sorted(DTYPES)}")
            overrides[key] = DTYPES[overrides[key]]
    return name, overrides


def build_tokenizer(
    config: ConfigDict, builder, workdir: pathlib.Path, text_key: str = "captions"
) -> Tokenizer:
    """The run's tokenizer: loaded from the workdir when resuming, else built and saved there.

    A small BPE (`kind='bpe'`) learns from the train split's `text_key` feature: a sequence
    of texts per record (`captions`, `questions`) or one text (`text`).
    """
    path = workdir / TOKENIZER_FILE
    if path.exists():
        return Tokenizer.load(path)
    if config.kind == "clip":
        tokenizer = load_clip_tokenizer(config.merges_path)
    elif config.kind == "bpe":
        source = builder.as_data_source("train")
        limit = min(len(source), config.train_on_examples)

        def texts_of(value):
            return [value] if isinstance(value, str | bytes) else list(value)

        texts = (
            pipeline.as_text(text) for i in range(limit) for text in texts_of(source[i][text_key])
        )
        tokenizer = train_bpe_tokenizer(texts, vocab_size=config.vocab_size)
    else:
        raise ValueError(f"unknown tokenizer kind {config.kind!r}; choose 'clip' or 'bpe'")
    if jax.process_index() == 0:
        tokenizer.save(path)
    return tokenizer


def inherited_tokenizer(init_from: str, workdir: pathlib.Path) -> None:
    """Copies the tokenizer of the jaxmm run `init_from` (a run, checkpoints or step folder)
    into `workdir`, unless the workdir has one already (a resumed run)."""
    if not init_from or (workdir / TOKENIZER_FILE).exists():
        return
    start = pathlib.Path(init_from).expanduser()
    for folder in (start, start.parent, start.parent.parent):
        if (folder / TOKENIZER_FILE).is_file():
            workdir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / TOKENIZER_FILE, workdir / TOKENIZER_FILE)
            return


def run_folder(checkpoint: pathlib.Path) -> pathlib.Path | None:
    """The jaxmm run folder (the one holding `config.json`) that `checkpoint` lies in, if any."""
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.json").is_file():
            return folder
    return None
