"""The training loop: `run(config, workdir)` trains the config's task and evaluates it.

The task (`jaxmm.train.tasks`: contrastive image-text pretraining or classification)
supplies the model, objective, examples and evaluation; the loop is the same for all.

Re-running the same command with the same workdir resumes from the newest
checkpoint: model, optimizer, step, RNG and the input pipeline's position are
restored, so the resumed losses equal those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
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
from jaxmm.train import config_check, distillation, distributed, tasks, workdir_lock
from jaxmm.train.checkpoint import Checkpointer, CheckpointRestoreError
from jaxmm.train.metric_writer import MetricWriter
from jaxmm.train.optimizer import ParamGroups, learning_rate_schedule, make_optimizer
from jaxmm.train.preemption import Preempted, PreemptionWatch
from jaxmm.train.pretrained import load_pretrained, load_variables
from jaxmm.train.state import abstract_state, create_train_state
from jaxmm.train.steps import NONFINITE_POLICIES, check_finite, make_train_step
from jaxmm.train.wise import evaluate_interpolations, wise_alphas


def validate_config(config: ConfigDict, mesh: Mesh) -> None:
    """Errors a user can fix, raised before any compute is spent."""
    config_check.check_config(config)  # unknown keys, wrong types, model vs image size
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
    accum = config.get("grad_accum_steps", 1)
    if accum < 1 or config.batch_size % (accum * batch_parallel):
        raise ValueError(
            f"grad_accum_steps={accum} must be at least 1 and split batch_size="
            f"{config.batch_size} into micro-batches that divide over the {batch_parallel} "
            "data-parallel devices (batch_size a multiple of grad_accum_steps x devices)"
        )
    if config.eval.batch_size % batch_parallel:
        raise ValueError(
            f"eval.batch_size={config.eval.batch_size} is not divisible by the "
            f"{batch_parallel} data-parallel devices"
        )
    if config.total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {config.total_steps}")
    if config.nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite={config.nonfinite!r}: expected one of {NONFINITE_POLICIES}")
    wise_alphas(config)  # raises on alphas outside [0, 1] or without init_from


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{'optim.learning_rate': 0.1, ...}` from a nested dict."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {
        name: value
        for key, sub in tree.items()
        for name, value in _flat(sub, f"{prefix}.{key}" if prefix else key).items()
    }


# Fields a resumed run may change without touching what its checkpoint holds.
_RUN_CONTROL = (
    "total_steps",
    "progress_bar",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "nonfinite",
    "wise_alpha",
    "eval.",
    "mesh.",
    "mesh_rules",
    "distributed.",
)


def _resume_advice(workdir: pathlib.Path, config: ConfigDict) -> str:
    """What to do when the workdir's checkpoint does not restore: the config fields that differ
    from the run's own `config.json` (another model, say), and how to start over."""
    saved_path = workdir / "config.json"
    advice = []
    if saved_path.exists():
        saved = _flat(json.loads(saved_path.read_text()))
        current = _flat(json.loads(config.to_json_best_effort()))
        changes = [
            f"{key}: {saved.get(key, '(absent)')} -> {current.get(key, '(absent)')}"
            for key in sorted(saved.keys() | current.keys())
            if saved.get(key) != current.get(key) and not key.startswith(_RUN_CONTROL)
        ]
        if changes:
            advice.append(
                f"This config differs from the one that started the run ({saved_path}) in: "
                + "; ".join(changes[:12])
                + (f" and {len(changes) - 12} more" if len(changes) > 12 else "")
                + ". To train this config, use another --workdir."
            )
    advice.append(
        f"If the checkpoint is damaged, delete that step's folder under {workdir / 'checkpoints'} "
        "to resume from the one before (or the folder itself to start over)."
    )
    return "\n".join(advice)


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
    rules = sharding.logical_rules(config.mesh_rules)
    validate_config(config, mesh)
    # Two runs in one workdir would overwrite each other's checkpoints: the second one stops.
    with workdir_lock.hold(workdir):
        return _train(config, workdir, mesh, rules)


def steps_in_flight() -> int:
    """Train steps dispatched before the loop waits for the oldest one.

    On accelerators one step stays queued behind the one whose metrics the host reads, logs
    and checks, so the device never idles on the host. On CPU the host is the device: waiting
    for every step costs nothing and keeps the progress bar's rate true.
    """
    return 0 if jax.default_backend() == "cpu" else 1


class _StepLog:
    """Progress bar, throughput and `train/...` lines of metrics.jsonl for finished steps."""

    def __init__(self, config: ConfigDict, writer: MetricWriter, progress, start_step: int):
        self.config, self.writer, self.progress = config, writer, progress
        self.last_time, self.last_step = time.perf_counter(), start_step
        self.skipped = 0  # steps whose update was withheld (non-finite) since the last line

    def restart_clock(self) -> None:
        self.last_time = time.perf_counter()

    def step_done(self, step: int, metrics: dict[str, Any]) -> None:
        self.progress.update()
        if step % self.config.log_every and step != self.config.total_steps:
            return
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        img_per_s = (step - self.last_step) * self.config.batch_size / (now - self.last_time)
        self.last_time, self.last_step = now, step
        line = {f"train/{k}": v for k, v in metrics.items()}
        line["train/img_per_s"] = img_per_s
        line["train/skipped_steps"], self.skipped = self.skipped, 0
        self.writer.write(step, line)
        self.progress.set_postfix(loss=f"{metrics['loss']:.3f}", img_s=f"{img_per_s:.0f}")


def write_samples(writer: MetricWriter, task: Any, step: int) -> None:
    """What TensorBoard shows of the last evaluation beside its numbers, for tasks that keep
    it: sample predictions (`task.eval_samples()`: an image with its question and answers,
    or its caption) and embeddings for the projector (`task.eval_projector()`)."""
    if hasattr(task, "eval_samples"):
        writer.write_samples(step, task.eval_samples())
    if hasattr(task, "eval_projector") and (points := task.eval_projector()) is not None:
        writer.write_projector(step, points)


def _train(config: ConfigDict, workdir: pathlib.Path, mesh: Mesh, rules: Any) -> dict[str, Any]:
    """`run` once the config is checked and the workdir is this run's alone."""
    builder = distributed.first_process_then_others(
        "prepare_data", lambda: datasets.prepare_builder(config.data)
    )
    datasets.require_splits(builder, config.data.get("train_split", "train"), config.eval.split)
    distillation.inherit_teacher_tokenizer(config, workdir)
    task = tasks.make_task(config, builder, workdir)
    model = task.model
    objective, teacher, teacher_shardings, teacher_args = task.objective, None, (), ()
    if distillation.enabled(config):  # a teacher that does not load stops the run here
        distiller = distillation.load_teacher(config, builder, workdir, task, mesh, rules)
        objective, teacher = distiller.objective, distiller.targets
        teacher_shardings, teacher_args = (distiller.shardings,), (distiller.variables,)
    tx = make_optimizer(config.optim, config.total_steps)
    schedule = learning_rate_schedule(config.optim, config.total_steps)

    # Initialised outside the mesh context: `create_train_state` places every array
    # through jit's out_shardings instead.
    inputs = task.init_inputs()
    state, state_shardings = create_train_state(
        lambda rng: model.init(rng, *inputs), tx, mesh, config.seed, rules
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
        try:
            state, data_state = checkpointer.restore(
                start_step, abstract_state(state_shardings, state)
            )
        except CheckpointRestoreError as error:
            checkpointer.close()
            raise CheckpointRestoreError(f"{error}\n{_resume_advice(workdir, config)}") from error
        train_iter.set_state(data_state)
        logging.info("resumed from step %d", start_step)
    elif config.get("init_from"):
        variables = load_pretrained(config.init_from, task, state.variables)
        state = jax.device_put(
            state.replace(params=variables.pop("params"), model_state=variables), state_shardings
        )

    if jax.process_index() == 0:  # after the restore: a failed resume keeps the run's config
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    batch_sharding = sharding.batch_sharding(mesh)
    train_step = jax.jit(
        make_train_step(
            model,
            tx,
            objective,
            schedule,
            ParamGroups.from_config(config.optim).is_locked,
            config.get("grad_accum_steps", 1),
            teacher,
        ),
        in_shardings=(state_shardings, batch_sharding, *teacher_shardings),
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
    log = _StepLog(config, writer, progress, start_step)
    in_flight = steps_in_flight()
    pending: list[tuple[int, dict[str, Any]]] = []  # dispatched steps not yet waited for

    def finish_pending(keep: int = 0) -> None:
        """Waits for the oldest pending steps until `keep` remain: checks, counts and logs
        each in step order."""
        while len(pending) > keep:
            done, metrics = pending.pop(0)
            jax.block_until_ready(metrics["loss"])
            finite_leaves = metrics.pop("finite_leaves")
            log.skipped += check_finite(finite_leaves, state.params, done, config.nonfinite)
            log.step_done(done, metrics)

    with (
        PreemptionWatch() as preemption,
        contextlib.closing(checkpointer),  # a started save completes even if training fails
        jax.set_mesh(mesh),
        nn.logical_axis_rules(rules),
    ):
        for step in range(start_step + 1, config.total_steps + 1):
            batch = _global_batch(next(train_iter), batch_sharding)
            state, metrics = train_step(state, batch, *teacher_args)
            pending.append((step, metrics))
            finish_pending(keep=in_flight)
            stop = preemption.should_stop(step)
            save = stop or step % config.checkpoint_every == 0 or step == config.total_steps
            evaluate_now = (
                config.eval.every and step % config.eval.every == 0 and step < config.total_steps
            )
            if save or evaluate_now:
                finish_pending()  # metrics stay in step order; a save holds checked steps
            if save:
                checkpointer.save(step, state, train_iter.get_state())
            if stop:
                checkpointer.close()  # the checkpoint is complete on disk before the exit
                writer.close()
                raise Preempted(step)
            if evaluate_now:
                writer.write(step, evaluate(state.variables))
                write_samples(writer, task, step)
                log.restart_clock()  # evaluation time is not training throughput
        finish_pending()
        progress.close()
        checkpointer.close()
        eval_metrics = evaluate(state.variables)
        if alphas := wise_alphas(config):
            # WiSE-FT: the fine-tuned model mixed with the one it started from (loaded again,
            # as a resumed run no longer holds it).
            zeroshot = load_variables(config.init_from, task)
            eval_metrics |= evaluate_interpolations(evaluate, zeroshot, state.variables, alphas)
    writer.write(config.total_steps, eval_metrics)
    write_samples(writer, task, config.total_steps)
    writer.close()
    if jax.process_index() == 0:
        (workdir / "final_metrics.json").write_text(json.dumps(eval_metrics, indent=2))
    return eval_metrics
