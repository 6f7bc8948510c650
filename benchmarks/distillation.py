"""Knowledge distillation on the built-in data: each student with and without its teacher, at
the same steps, seeds and recipe.

    python benchmarks/distillation.py [--pairs=shapes,clip] [--seeds=0,1,2] [--runs=DIR]

`shapes`: the ResNet-18 of `configs/resnet18_shapes.py` (width 16) teaching the width-4
ResNet-18 of `configs/distill_shapes.py` (top-1 on the test split's 40 trained classes,
`seen_top1`, and on all 48). `clip`: the default job's CLIP (`configs/clip_small.py`)
teaching the half-width CLIP of `configs/distill_clip_small.py` (zero-shot top-1 over the 48
classes, and over the 8 combinations held out of training). Teachers are trained first,
into `--runs`/teachers (kept: a finished teacher run is reused next time); students are
trained afresh into `--runs`/students, once per seed in `--seeds`: a tiny student's accuracy
after a short schedule can vary from seed to seed by more than distillation moves it.
Prints a table and writes JSON (default `benchmarks/results/distillation.json`, `--out`)
with the machine and the date.

On a 2-core CPU the teachers take about 5 and 11 minutes, each shapes student about 1.5 and
each CLIP student about 4.
"""

import datetime
import json
import os
import pathlib
import platform
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The configs live beside jaxmm at the repository root, not in the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import jaxmm.train  # noqa: E402
from configs import clip_small, distill_clip_small, distill_shapes, resnet18_shapes  # noqa: E402

# pair -> (teacher config, student config, the metrics compared)
PAIRS = {
    "shapes": (
        resnet18_shapes,
        distill_shapes,
        ("eval/seen_top1", "eval/top1"),
    ),
    "clip": (
        clip_small,
        distill_clip_small,
        ("zeroshot/top1", "zeroshot/heldout_top1", "zeroshot/seen_top1"),
    ),
}

flags.DEFINE_list("pairs", list(PAIRS), f"Which of {list(PAIRS)} to run.")
flags.register_validator(
    "pairs", lambda pairs: set(pairs) <= set(PAIRS), f"--pairs: choose from {list(PAIRS)}"
)
flags.DEFINE_string("runs", "benchmarks/results/distillation_runs", "Teacher and student runs.")
flags.DEFINE_integer("steps", 0, "Student steps (0: the config's).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Student seeds: each variant is trained once per seed.")
flags.DEFINE_string("out", "benchmarks/results/distillation.json", "Where to write the JSON.")
FLAGS = flags.FLAGS


def timed_run(config, workdir: pathlib.Path) -> dict:
    config.progress_bar = False
    start = time.perf_counter()
    metrics = jaxmm.train.run(config, workdir)
    return {**metrics, "seconds": round(time.perf_counter() - start, 1)}


def teacher_run(name: str, module) -> tuple[pathlib.Path, dict]:
    """The teacher's run folder and final metrics, trained unless already there."""
    workdir = pathlib.Path(FLAGS.runs) / "teachers" / name
    done = workdir / "final_metrics.json"
    if done.exists():
        return workdir, json.loads(done.read_text())
    return workdir, timed_run(module.get_config(), workdir)


def student_runs(name: str, teacher: pathlib.Path, module) -> dict[str, dict]:
    """`{variant: {seed: metrics}}`: the student without and with its teacher, per seed."""
    root = pathlib.Path(FLAGS.runs) / "students" / name
    rows = {}
    for variant, source in (("without teacher", ""), ("distilled", str(teacher))):
        rows[variant] = {}
        for seed in map(int, FLAGS.seeds):
            config = module.get_config()
            config.distill.teacher, config.seed = source, seed
            if FLAGS.steps:
                config.total_steps = FLAGS.steps
            workdir = root / variant.replace(" ", "_") / f"seed{seed}"
            shutil.rmtree(workdir, ignore_errors=True)  # a finished run would only be evaluated
            rows[variant][seed] = timed_run(config, workdir)
            print(f"{name} {variant} seed {seed}: {rows[variant][seed]}", flush=True)
    return rows


def table(results: dict) -> str:
    """Per pair: each metric's mean over the seeds, then each seed's value."""
    lines = []
    for name, result in results.items():
        keys = PAIRS[name][2]
        lines += [
            f"\n{name}: {result['teacher_model']} -> {result['student_model']}, "
            f"{result['steps']} steps, seeds {FLAGS.seeds}",
            "| run | " + " | ".join(keys) + " | seconds per run |",
            "|---|" + "---|" * (len(keys) + 1),
        ]
        runs = {"teacher": {0: result["teacher"]}, **result["student"]}
        for run, by_seed in runs.items():
            cells = []
            for key in keys:
                values = [100 * metrics[key] for metrics in by_seed.values()]
                each = ", ".join(f"{v:.1f}" for v in values) if len(values) > 1 else ""
                cells.append(f"{np.mean(values):.1f}%" + (f" ({each})" if each else ""))
            seconds = np.mean([m.get("seconds", np.nan) for m in by_seed.values()])
            lines.append(f"| {run} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    results = {}
    for name in FLAGS.pairs:
        teacher_module, student_module, _ = PAIRS[name]
        teacher, teacher_metrics = teacher_run(name, teacher_module)
        student_config = student_module.get_config()
        results[name] = {
            "teacher_model": teacher_module.get_config().model.to_dict(),
            "student_model": student_config.model.to_dict(),
            "steps": FLAGS.steps or student_config.total_steps,
            "distill": {k: v for k, v in student_config.distill.items() if k != "teacher"},
            "teacher": teacher_metrics,
            "student": student_runs(name, teacher, student_module),
        }
    print(table(results))
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "distillation",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                "devices": [str(d) for d in jax.devices()],
                "versions": {"jax": jax.__version__, "python": platform.python_version()},
                "pairs": results,
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
