"""The `avbench` command line: the global options, each stage's commands (its `commands.py`), and
the errors printed without a traceback. Each subcommand imports its module lazily, so
`avbench --help` stays fast and a broken optional part never breaks the others."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench import __version__
from bench.arguments import add_device_option, positive_int
from bench.data import commands as data_commands
from bench.evaluate import commands as evaluate_commands
from bench.pretrain import commands as pretrain_commands
from bench.results import commands as results_commands


def _cmd_sweep(args: argparse.Namespace) -> int:
    from bench.results.write import write_tables
    from bench.sweep.config import load_sweep, select_encoders
    from bench.sweep.cost import dry_run_report
    from bench.sweep.executors import LocalExecutor, RayExecutor
    from bench.sweep.run import run_sweep

    from bench.device import resolve_device

    resolve_device(args.device)  # a sweep asked to run on a GPU stops here when there is none
    sweep = load_sweep(args.config)
    if args.encoders:
        sweep = select_encoders(sweep, args.encoders)
    if args.records is not None:
        sweep.records = args.records
    if args.dry_run:
        print(dry_run_report(sweep, device=args.device))
        return 0
    if args.executor == "ray":
        executor = RayExecutor(args.ray_address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                               device=args.device)
    else:
        executor = LocalExecutor(workers=args.workers, runs_per_device=args.runs_per_device, device=args.device)
    summary = run_sweep(sweep, force=args.force, progress=not args.quiet, executor=executor, plugins=args.plugin)
    if sweep.tables is not None:
        for path in write_tables(sweep.records, sweep.tables):
            print(f"wrote {path}")
    built = f"{summary['pretrained']} pretraining checkpoint(s) built, " if summary.get("pretrained") else ""
    print(f"sweep {sweep.name}: {built}{summary['ran']} run(s) done, {summary['skipped']} already recorded, "
          f"{len(summary['failed'])} failed")
    for line in summary["failed"]:
        print(f"  FAILED {line}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avbench", description="avbench: a benchmark harness for speech representations.")
    parser.add_argument("--version", action="version", version=f"avbench {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import a module (or a .py file) that registers encoders; repeatable")
    sub = parser.add_subparsers(dest="command", required=True)

    data_commands.add_commands(sub)
    evaluate_commands.add_commands(sub)
    pretrain_commands.add_commands(sub)
    _add_sweep_command(sub)
    results_commands.add_commands(sub)
    return parser


def _add_sweep_command(sub: argparse._SubParsersAction) -> None:
    # The sweep command lives here, above the stages, because it spans two: it runs the grid
    # (sweep/) and then regenerates the tables the config names (results/).
    sweep = sub.add_parser("sweep", help="run a YAML grid of runs, skipping recorded ones")
    sweep.add_argument("config", type=Path)
    sweep.add_argument("--records", type=Path, default=None, help="override the config's records path")
    sweep.add_argument("--force", action="store_true", help="re-run recorded configs")
    sweep.add_argument("--encoders", type=lambda s: [n.strip() for n in s.split(",") if n.strip()], default=None,
                       help="run only these of the config's encoders (comma-separated base names, e.g. "
                            "mfcc39,logmel,av-joint, or pretraining entries, e.g. resnet18-dino-q) and the "
                            "pretraining they need; the rest stays to run later")
    sweep.add_argument("--dry-run", action="store_true",
                       help="count recorded, failed and remaining runs, estimate the cost, and exit")
    sweep.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local worker processes (default) or Ray tasks (pip install 'avbench[ray]')")
    sweep.add_argument("--workers", type=positive_int, default=None,
                       help="local: concurrent runs (default: --runs-per-device per device, else one per core)")
    sweep.add_argument("--runs-per-device", dest="runs_per_device", type=positive_int, default=None,
                       help="local: concurrent runs per GPU, or on the machine without GPUs")
    add_device_option(sweep)
    sweep.add_argument("--ray-address", dest="ray_address", default=None,
                       help="ray: cluster address (default: start a local Ray instance)")
    sweep.add_argument("--cpus-per-run", dest="cpus_per_run", type=float, default=1.0, help="ray: default 1")
    sweep.add_argument("--gpus-per-run", dest="gpus_per_run", type=float, default=0.0, help="ray: default 0")
    sweep.set_defaults(func=_cmd_sweep)


def main(argv: list[str] | None = None) -> int:
    """avbench: a benchmark harness for speech representations."""
    args = build_parser().parse_args(argv)
    if args.command in ("run", "sweep", "pretrain"):
        from bench.runtime import flush_denormals

        flush_denormals()  # before torch's thread pool exists, so every worker thread inherits it
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from bench.data.audio import AudioError
    from bench.data.manifest import ManifestError
    from bench.data.prepare.common import CorpusLayoutError
    from bench.errors import ConfigError

    try:
        for plugin in args.plugin:
            from bench.registry import import_plugin

            import_plugin(plugin)
        return int(args.func(args) or 0)
    except (AudioError, ManifestError, CorpusLayoutError, ConfigError, FileNotFoundError) as exc:
        # These errors name the file and the fix: print them, not a traceback (unless -v).
        if args.verbose:
            raise
        print(f"avbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C (or kill -INT) is how a long sweep is paused, not a crash: say what survives.
        if args.verbose:
            raise
        print("avbench: interrupted. Finished runs and checkpoints are recorded; a run or pretraining in flight "
              "resumes from its last saved epoch or step when the same command runs again.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
