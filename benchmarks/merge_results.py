"""One side-by-side table from several `train_step.py` JSON reports of one session.

    python benchmarks/merge_results.py results/*.json --out=results/train_step_merged.json

Rows keep their framework labels (`jaxmm attention=cudnn`, `torch compile`, ...); the last
column is each row's speed relative to the first jaxmm row of its model. The merged JSON keeps
every report's header (device, versions, options, XLA flags) beside the rows.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.train_step import format_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="train_step.py JSON files")
    parser.add_argument("--out", help="merged JSON (default: print only)")
    args = parser.parse_args(argv)
    reports = [json.loads(pathlib.Path(path).read_text()) for path in args.reports]
    rows = [row for report in reports for row in report["rows"]]
    order = list(dict.fromkeys(row["model"] for row in rows))
    rows.sort(key=lambda row: order.index(row["model"]))  # stable: labels keep their order
    print(format_table(rows))
    if args.out:
        headers = [{k: v for k, v in r.items() if k != "rows"} for r in reports]
        merged = {"reports": dict(zip(args.reports, headers, strict=True)), "rows": rows}
        pathlib.Path(args.out).write_text(json.dumps(merged, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
