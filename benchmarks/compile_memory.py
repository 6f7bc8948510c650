"""Compile time and compiled memory of the train step: scanned vs per-layer layers, and each
rematerialisation policy.

    python benchmarks/compile_memory.py --out=benchmarks/results/compile_memory_cpu.json

For each workload (default ViT-B/16 and CLIP ViT-B/16 at 224 px, batch 32) and each
`(scan_layers, remat)` setting, the jaxmm train step of `benchmarks/train_step.py` is lowered
and compiled once, without running: the table gives the seconds `jit(...).lower(...)` and
`.compile()` took and `compiled.memory_analysis()`'s temporary (activation and workspace)
and argument bytes. Compilation runs on the host CPU whatever the backend, so compile times
measured on a CPU machine carry over to accelerators; memory is the backend's own plan.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from benchmarks.train_step import Workload, jax_versions, make_jaxmm_step  # noqa: E402

DEFAULT_SETTINGS = "false:none,true:none,true:full,true:dots_with_no_batch_dims_saveable"


def measure(workload: Workload, dtype: str, scan: bool, remat: str) -> dict:
    """Lowers and compiles one step; returns times in seconds and memory in bytes."""
    knobs = {"scan_layers": scan, "remat": remat}
    setup = make_jaxmm_step(workload, dtype, total_steps=10, knobs=knobs)
    with setup.context():
        start = time.perf_counter()
        lowered = setup.train_step.lower(setup.train_state, setup.on_device)
        lowered_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return {
        "model": workload.model,
        "batch": workload.batch,
        "image_size": workload.image_size,
        "scan_layers": scan,
        "remat": remat,
        "lower_s": lowered_s,
        "compile_s": compile_s,
        "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "argument_bytes": getattr(memory, "argument_size_in_bytes", None),
        "output_bytes": getattr(memory, "output_size_in_bytes", None),
    }


def format_table(rows: list[dict]) -> str:
    header = f"{'model':14s} {'batch':>5s} {'scan':>5s} {'remat':34s} "
    header += f"{'lower s':>8s} {'compile s':>9s} {'temp GiB':>9s} {'args GiB':>9s}"
    lines = [header, "-" * len(header)]
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f}"
    for r in rows:
        lines.append(
            f"{r['model']:14s} {r['batch']:5d} {str(r['scan_layers']):>5s} {r['remat']:34s} "
            f"{r['lower_s']:8.1f} {r['compile_s']:9.1f} {gib(r['temp_bytes']):>9s} "
            f"{gib(r['argument_bytes']):>9s}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit_b16:32,clip_vit_b16:32", help="name:batch,...")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="scan:remat,... to compile")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", default="benchmarks/results/compile_memory.json")
    args = parser.parse_args(argv)
    rows = []
    for spec in args.models.split(","):
        workload = Workload.parse(spec, None, 224)
        for setting in args.settings.split(","):
            scan, remat = setting.split(":")
            rows.append(measure(workload, args.dtype, scan == "true", remat))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + format_table(rows))
    report = {
        "benchmark": "benchmarks/compile_memory.py",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "backend": jax.default_backend(),
        "versions": {"python": platform.python_version(), **jax_versions()},
        "dtype": args.dtype,
        "rows": rows,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
