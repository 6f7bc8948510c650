"""The benchmark's path (models, losses, sharding, the train step, state and optimizer) imports
and trains on a bare accelerator host: one without tensorflow-datasets, grain, ml_collections,
tokenizers or TensorFlow (DESIGN.md section 6), and without torch."""

import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

# Runs in a fresh python, where the absent packages cannot be imported.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    ABSENT = {"tensorflow_datasets", "grain", "ml_collections", "tokenizers", "tensorflow",
              "array_record", "torch"}

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ABSENT:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    try:
        import ml_collections
        raise SystemExit("the blocker let ml_collections through")
    except ModuleNotFoundError:
        pass

    import jaxmm.losses, jaxmm.models, jaxmm.sharding
    import jaxmm.train.objectives, jaxmm.train.optimizer, jaxmm.train.state, jaxmm.train.steps
    from benchmarks import train_step

    result = train_step.run_jaxmm(
        train_step.Workload("vit_test", batch=2, image_size=32), "float32", warmup=1, num_steps=2
    )
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ABSENT)
    print("RESULT " + json.dumps({"result": result, "loaded": loaded}))
    """
)


def test_benchmark_path_trains_without_data_and_config_packages():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    report = __import__("json").loads(report.removeprefix("RESULT "))
    assert report["loaded"] == []
    result = report["result"]
    assert result["median_s"] > 0
    assert result["device"] == "cpu"
    # vit_test at 32 px with the benchmark's 1000 classes: the hand count of
    # tests/test_flops.py with a 1000-way head, 828,288 - 640 + 64,000 per forward, x3.
    assert result["train_flops_per_image"] == 3 * (828_288 - 640 + 2 * 32 * 1000)
