"""The training loop: `run(config, workdir)` trains a CLIP model and evaluates it.

Re-running the same command with the same workdir resumes from the newest
checkpoint: model, optimizer, step, RNG and the input pipeline's position are
restored, so the resumed losses equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from flax import linen as nn
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxmm import sharding
from jaxmm.data import datasets, pipeline
from jaxmm.data.tokenizer import Tokenizer, load_clip_tokenizer, train_bpe_tokenizer
from jaxmm.evaluate.image_text import evaluate_image_text
from jaxmm.models import create_model
from jaxmm.train.checkpoint import Checkpointer
from jaxmm.train.metric_writer import MetricWriter
from jaxmm.train.optimizer import learning_rate_schedule, make_optimizer
from jaxmm.train.state import abstract_state, create_train_state
from jaxmm.train.steps import make_encoders, make_train_step

TOKENIZER_FILE = "tokenizer.json"


def build_tokenizer(config: ConfigDict, builder, workdir: pathlib.Path) -> Tokenizer:
    """The run's tokenizer: loaded from the workdir when resuming, else built and saved there."""
    path = workdir / TOKENIZER_FILE
    if path.exists():
        return Tokenizer.load(path)
    if config.kind == "clip":
        tokenizer = load_clip_tokenizer(config.merges_path)
    elif config.kind == "bpe":
        source = builder.as_data_source("train")
        limit = min(len(source), config.train_on_examples)
        texts = (
            pipeline.as_text(caption) for i in range(limit) for caption in source[i]["captions"]
        )
        tokenizer = train_bpe_tokenizer(texts, vocab_size=config.vocab_size)
    else:
        raise ValueError(f"unknown tokenizer kind {config.kind!r}; choose 'clip' or 'bpe'")
    if jax.process_index() == 0:
        tokenizer.save(path)
    return tokenizer


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(config: ConfigDict, vocab_size: int) -> nn.Module:
    """The CLIP model of `config.model`, its text vocabulary sized to the tokenizer.

    With `config.loss == "siglip"` the model gets SigLIP's learnable logit bias.

    `dtype` (compute) and `param_dtype` may be given as names, e.g. `"bfloat16"`.
    """
    overrides = config.model.to_dict()
    name = overrides.pop("name")
    if config.loss == "siglip":
        # SigLIP's initial temperature and bias (Zhai et al. 2023, section 3.1): the
        # bias keeps the many negative pairs from dominating the first steps.
        overrides.setdefault("init_logit_scale", math.log(10.0))
        overrides.setdefault("init_logit_bias", -10.0)
    for key in ("dtype", "param_dtype"):
        if key in overrides:
            if overrides[key] not in DTYPES:
                raise ValueError(f"model.{key}={overrides[key]!r}; choose from {sorted(DTYPES)}")
            overrides[key] = DTYPES[overrides[key]]
    overrides["text"] = {**overrides.get("text", {}), "vocab_size": vocab_size}
    return create_model(name, **overrides)


def validate_config(config: ConfigDict, mesh: Mesh) -> None:
    """Errors a user can fix, raised before any compute is spent."""
    batch_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.batch_size % batch_parallel:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by the {batch_parallel} "
            f"data-parallel devices of mesh {dict(mesh.shape)}"
        )
    if config.batch_size % jax.process_count():
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by {jax.process_count()} processes"
        )
    if config.eval.batch_size % batch_parallel:
        raise ValueError(
            f"eval.batch_size={config.eval.batch_size} is not divisible by the "
            f"{batch_parallel} data-parallel devices"
        )
    if config.total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {config.total_steps}")


def _global_batch(local: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into global arrays sharded over the mesh."""
    return {
        key: jax.make_array_from_process_local_data(batch_sharding, value)
        for key, value in local.items()
    }


def evaluate(params, encoders, tokenizer, builder, config: ConfigDict) -> dict[str, float]:
    """Zero-shot and retrieval metrics on `config.eval.split` with `params`."""
    encode_image, encode_text = encoders
    return evaluate_image_text(
        lambda images: encode_image(params, images),
        lambda tokens: encode_text(params, tokens),
        tokenizer,
        builder.as_data_source(config.eval.split),
        config.data,
        class_names=pipeline.class_names(builder),
        templates=config.eval.templates,
        batch_size=config.eval.batch_size,
    )


def run(config: ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains (or resumes) the run in `workdir`, evaluates it, and returns the final metrics."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    validate_config(config, mesh)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    builder = datasets.prepare_builder(config.data)
    tokenizer = build_tokenizer(config.tokenizer, builder, workdir)
    model = build_model(config, tokenizer.vocab_size)
    tx = make_optimizer(config.optim, config.total_steps)
    schedule = learning_rate_schedule(config.optim, config.total_steps)

    size = config.data.image_size
    dummy_images = np.zeros((1, size, size, 3), np.float32)
    dummy_tokens = np.zeros((1, config.data.context_length), np.int32)
    # Initialised outside the mesh context: Flax's DenseGeneral initialises a flat kernel
    # and reshapes it, and a mesh context would constrain the flat array to the 4-D spec.
    # `create_train_state` places every array through jit's out_shardings instead.
    state, state_shardings = create_train_state(
        lambda rng: model.init(rng, dummy_images, dummy_tokens)["params"], tx, mesh, config.seed
    )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("model %s: %.2fM parameters", config.model.name, num_params / 1e6)

    train_iter = pipeline.train_iterator(
        builder.as_data_source("train"),
        tokenizer,
        config.data,
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    checkpointer = Checkpointer(workdir / "checkpoints", config.keep_checkpoints)
    start_step = checkpointer.latest_step() or 0
    if start_step:
        state, data_state = checkpointer.restore(start_step, abstract_state(state_shardings, state))
        train_iter.set_state(data_state)
        logging.info("resumed from step %d", start_step)

    batch_sharding = sharding.batch_sharding(mesh)
    train_step = jax.jit(
        make_train_step(model, tx, config.loss, schedule),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    encoders = make_encoders(model, mesh)
    writer = MetricWriter(workdir)
    progress = tqdm.tqdm(
        total=config.total_steps,
        initial=start_step,
        desc="train",
        disable=jax.process_index() != 0 or not config.progress_bar,
        dynamic_ncols=True,
    )
    last_time, last_step = time.perf_counter(), start_step
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        for step in range(start_step + 1, config.total_steps + 1):
            batch = _global_batch(next(train_iter), batch_sharding)
            state, metrics = train_step(state, batch)
            # Wait for the step so that the progress bar shows real progress rather than
            # asynchronous dispatch; grain keeps preparing the next batches meanwhile.
            jax.block_until_ready(metrics["loss"])
            progress.update()
            if step % config.log_every == 0 or step == config.total_steps:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                img_per_s = (step - last_step) * config.batch_size / (now - last_time)
                last_time, last_step = now, step
                train_metrics = {f"train/{k}": v for k, v in metrics.items()}
                train_metrics["train/img_per_s"] = img_per_s
                writer.write(step, train_metrics)
                progress.set_postfix(loss=f"{metrics['loss']:.3f}", img_s=f"{img_per_s:.0f}")
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                checkpointer.save(step, state, train_iter.get_state())
            if config.eval.every and step % config.eval.every == 0 and step < config.total_steps:
                writer.write(step, evaluate(state.params, encoders, tokenizer, builder, config))
                last_time = time.perf_counter()  # evaluation time is not training throughput
        progress.close()
        checkpointer.close()
        eval_metrics = evaluate(state.params, encoders, tokenizer, builder, config)
    writer.write(config.total_steps, eval_metrics)
    writer.close()
    if jax.process_index() == 0:
        (workdir / "final_metrics.json").write_text(json.dumps(eval_metrics, indent=2))
    return eval_metrics
