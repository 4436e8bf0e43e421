"""The results stage's command: `avbench tables` regenerates results/ from the run records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    tables = sub.add_parser("tables", help="regenerate result tables from the run records (no torch work)")
    tables.add_argument("--records", type=Path, default=Path("results/runs.jsonl"))
    tables.add_argument("--out", type=Path, default=Path("results"))
    tables.set_defaults(func=_cmd_tables)
    report = sub.add_parser("report", help="write the study report of a sweep config (report.md, report.html) "
                                           "from its run records (no torch work)")
    report.add_argument("config", type=Path, help="the sweep config whose study to report (e.g. configs/question.yaml)")
    report.add_argument("--records", type=Path, default=None, help="default: the config's records")
    report.add_argument("--out", type=Path, default=None, help="default: results/<name>/")
    report.set_defaults(func=_cmd_report)


def _cmd_tables(args: argparse.Namespace) -> int:
    from bench.results.write import write_tables

    if not Path(args.records).is_file():
        print(f"avbench: error: {args.records}: no run records yet. Run `avbench run` or `avbench sweep` first.",
              file=sys.stderr)
        return 2
    for path in write_tables(args.records, args.out):
        print(f"wrote {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bench.results.write import write_report

    for path in write_report(args.config, args.records, args.out):
        print(f"wrote {path}")
    return 0
