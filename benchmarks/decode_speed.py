"""Time per generated token of the captioner's decoder, with and without its key/value cache.

    python benchmarks/decode_speed.py [--model captioner_small] [--batch 8]
        [--prefixes 8 32 64] [--new_tokens 16] [--repeats 5] [--out ...json]

For each prefix length P, with random weights (speed does not depend on them) and the image
context computed once beforehand (`Captioner.encode`, as generation does):

* cached: the decoder's cache is filled with P tokens, then `--new_tokens` single-token steps
  (`Captioner.decode`, the step `jaxmm.generate` runs) are timed inside one `lax.scan`. The
  cache has a fixed size, `max_length = max(prefixes) + new_tokens` positions, and every step
  attends over all of it (masked), so its cost does not depend on P;
* uncached: each new token re-runs the decoder over the whole window of its P + 1 tokens
  (teacher forcing on the prefix, the last position's logits), as generation without a cache
  must; also `--new_tokens` steps inside one `lax.scan`.

Both pick the argmax token, so each step depends on the previous one. Every timed function
runs once untimed first (compilation excluded); the median of `--repeats` runs is reported,
divided by the number of steps. Prints a table and writes JSON (default
`benchmarks/results/decode_speed.json`) with the CPU or device, core count, load average,
jax version and date. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

from jaxmm.generate import init_cache  # noqa: E402
from jaxmm.models import create_model  # noqa: E402
from jaxmm.models.captioner import CAPTIONER_VARIANTS  # noqa: E402


def cpu_name() -> str:
    """The host CPU's model name (Linux), else what `platform` knows."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` (its result waited for) over `repeats` runs, after one
    untimed run that compiles it."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark(args: argparse.Namespace) -> list[dict]:
    max_length = max(args.prefixes) + args.new_tokens
    model = create_model(args.model, decoder=dict(max_length=max_length))
    vocab = model.decoder.vocab_size
    size = {"captioner_clip_vit_b32": 224}.get(args.model, 32)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(args.batch, size, size, 3)), jnp.float32)
    tokens = jnp.asarray(rng.integers(1, vocab - 2, (args.batch, max_length)), jnp.int32)
    variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), images[:1], tokens[:1]))
    context = jax.jit(lambda v, x: model.apply(v, x, method="encode"))(variables, images)

    def step(variables, cache, token):
        logits, updated = model.apply(
            {**variables, "cache": cache}, token, None, method="decode", mutable=["cache"]
        )
        return updated["cache"], jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)

    @jax.jit
    def prefill(variables, prefix, context):
        cache = init_cache(model, variables, context, max_length)
        _, updated = model.apply(
            {**variables, "cache": cache}, prefix, context, method="decode", mutable=["cache"]
        )
        return updated["cache"]

    @jax.jit
    def cached_steps(variables, cache, token):
        def body(carry, _):
            cache, token = carry
            return step(variables, cache, token), None

        return jax.lax.scan(body, (cache, token), length=args.new_tokens)[0][1]

    @jax.jit
    def uncached_steps(variables, window, context):
        def body(window, _):
            logits = model.apply(variables, window, context, method=lambda m, t, c: m.decoder(t, c))
            chosen = jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(jnp.int32)
            return jnp.concatenate([window[:, 1:], chosen], axis=1), None

        return jax.lax.scan(body, window, length=args.new_tokens)[0]

    rows = []
    for prefix in args.prefixes:
        cache = prefill(variables, tokens[:, :prefix], context)
        last = tokens[:, prefix : prefix + 1]
        cached = median_seconds(partial(cached_steps, variables, cache, last), args.repeats)
        window = tokens[:, : prefix + 1]
        uncached = median_seconds(partial(uncached_steps, variables, window, context), args.repeats)
        rows.append(
            {
                "prefix": prefix,
                "cache_positions": max_length,
                "cached_ms_per_token": round(1e3 * cached / args.new_tokens, 3),
                "uncached_ms_per_token": round(1e3 * uncached / args.new_tokens, 3),
            }
        )
        print(f"prefix {prefix}: done", flush=True)
    return rows


def format_table(rows: list[dict], batch: int) -> str:
    lines = [
        f"| prefix | cached ms/token (batch {batch}) | uncached ms/token | uncached / cached |",
        "|---|---|---|---|",
    ]
    for row in rows:
        ratio = row["uncached_ms_per_token"] / row["cached_ms_per_token"]
        lines.append(
            f"| {row['prefix']} | {row['cached_ms_per_token']:.3f} "
            f"| {row['uncached_ms_per_token']:.3f} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="captioner_small", choices=sorted(CAPTIONER_VARIANTS))
    parser.add_argument("--batch", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--prefixes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--new_tokens", type=int, default=16, help="timed steps per prefix")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median counts")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/decode_speed.json"))
    args = parser.parse_args(argv)
    if min(args.prefixes) < 1 or args.batch < 1 or args.new_tokens < 1 or args.repeats < 1:
        parser.error("--prefixes, --batch, --new_tokens and --repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = os.getloadavg()
    rows = benchmark(args)
    device = jax.devices()[0]
    result = {
        "benchmark": "benchmarks/decode_speed.py",
        "date": datetime.date.today().isoformat(),
        "model": args.model,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "device": f"{jax.device_count()} x {device.device_kind}",
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "repeats": args.repeats,
        "results": rows,
    }
    print(
        f"\n{args.model}, {result['device']}, {result['cpu']}, {result['cpu_cores']} cores, ",
        end="",
    )
    print(f"jax {jax.__version__}, load average at start {result['load_average_at_start']}\n")
    print(format_table(rows, args.batch))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
