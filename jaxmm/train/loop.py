"""The training loop: `run(config, workdir)` trains the config's task and evaluates it.

The task (`jaxmm.train.tasks`: contrastive image-text pretraining or classification)
supplies the model, objective, examples and evaluation; the loop is the same for all.

Re-running the same command with the same workdir resumes from the newest
checkpoint: model, optimizer, step, RNG and the input pipeline's position are
restored, so the resumed losses equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging
from flax import linen as nn
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxmm import sharding
from jaxmm.data import datasets, pipeline
from jaxmm.train import distributed, tasks
from jaxmm.train.checkpoint import Checkpointer
from jaxmm.train.metric_writer import MetricWriter
from jaxmm.train.optimizer import ParamGroups, learning_rate_schedule, make_optimizer
from jaxmm.train.pretrained import load_pretrained, load_variables
from jaxmm.train.state import abstract_state, create_train_state
from jaxmm.train.steps import make_train_step
from jaxmm.train.wise import evaluate_interpolations, wise_alphas


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
    wise_alphas(config)  # raises on alphas outside [0, 1] or without init_from


def _global_batch(local: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into global arrays sharded over the mesh."""
    return {
        key: jax.make_array_from_process_local_data(batch_sharding, value)
        for key, value in local.items()
    }


def run(config: ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains (or resumes) the run in `workdir`, evaluates it, and returns the final metrics."""
    distributed.initialize(config.distributed)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    validate_config(config, mesh)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    builder = distributed.first_process_then_others(
        "prepare_data", lambda: datasets.prepare_builder(config.data)
    )
    task = tasks.make_task(config, builder, workdir)
    model = task.model
    tx = make_optimizer(config.optim, config.total_steps)
    schedule = learning_rate_schedule(config.optim, config.total_steps)

    # Initialised outside the mesh context: `create_train_state` places every array
    # through jit's out_shardings instead.
    inputs = task.init_inputs()
    state, state_shardings = create_train_state(
        lambda rng: model.init(rng, *inputs), tx, mesh, config.seed
    )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("model %s: %.2fM parameters", config.model.name, num_params / 1e6)

    train_iter = pipeline.train_iterator(
        builder.as_data_source(config.data.get("train_split", "train")),
        task.example_fn,
        config.data,
        batch_size=config.batch_size,
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
    elif config.get("init_from"):
        variables = load_pretrained(config.init_from, task, state.variables)
        state = jax.device_put(
            state.replace(params=variables.pop("params"), model_state=variables), state_shardings
        )

    batch_sharding = sharding.batch_sharding(mesh)
    train_step = jax.jit(
        make_train_step(
            model, tx, task.objective, schedule, ParamGroups.from_config(config.optim).is_locked
        ),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    evaluate = task.evaluator(mesh)
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
                writer.write(step, evaluate(state.variables))
                last_time = time.perf_counter()  # evaluation time is not training throughput
        progress.close()
        checkpointer.close()
        eval_metrics = evaluate(state.variables)
        if alphas := wise_alphas(config):
            # WiSE-FT: the fine-tuned model mixed with the one it started from (loaded again,
            # as a resumed run no longer holds it).
            zeroshot = load_variables(config.init_from, task)
            eval_metrics |= evaluate_interpolations(evaluate, zeroshot, state.variables, alphas)
    writer.write(config.total_steps, eval_metrics)
    writer.close()
    if jax.process_index() == 0:
        (workdir / "final_metrics.json").write_text(json.dumps(eval_metrics, indent=2))
    return eval_metrics
