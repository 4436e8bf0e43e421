"""Run records: one JSON object per line in `runs.jsonl`, appended atomically.

Each finished run appends exactly one line. The append is a single os.write of the whole line
under an exclusive flock, so concurrent workers never interleave and a reader never sees half a
record from a live writer. A line cut short by a machine crash is reported and ignored on read.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

from bench.errors import ConfigError

log = logging.getLogger("avbench.records")

DEFAULT_RECORDS = Path("results") / "runs.jsonl"


def sidecar_path(records: str | Path) -> Path:
    """`results/runs.jsonl` -> `results/runs.sweeps.json`: what bench.sweep.run knows of the sweeps behind them."""
    records = Path(records)
    return records.with_name(records.stem + ".sweeps.json")


def pretraining_records_path(records: str | Path) -> Path:
    """`results/runs.jsonl` -> `results/runs.pretraining.jsonl`: the records of the pretraining stage
    (bench.pretrain.stage) whose checkpoints the runs beside them evaluated."""
    records = Path(records)
    return records.with_name(records.stem + ".pretraining.jsonl")


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Mend a torn last line (a crash mid-write) so the new record starts on its own line.
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All complete records; malformed lines are counted and logged, never silently dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    records, bad = [], 0
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
                log.warning("%s:%d: malformed record (cut short by a crash?) ignored", path, number)
    if bad:
        log.warning("%s: %d malformed line(s) ignored; their runs will be re-run", path, bad)
    return records


def read_pretraining_records(path: str | Path) -> list[dict[str, Any]]:
    """Every pretraining record of `path`, in file order; none if there is no such file. A line that is
    not a pretraining record is an error naming the file and line: the tables would misstate a budget."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: malformed pretraining record ({exc}); fix or remove that "
                                  "line (cut short by a crash?), then run `avbench tables` again.") from exc
            if not (isinstance(record, dict) and record.get("kind") == "pretraining"
                    and isinstance(record.get("identity"), str) and record.get("status") in ("ok", "failed")):
                raise ConfigError(f"{path}:{number}: not a pretraining record (needs kind 'pretraining', an "
                                  "identity and status 'ok' or 'failed'); fix or remove that line.")
            records.append(record)
    return records


def completed(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """config_hash -> the latest successful record with that hash."""
    done: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get("config_hash"):
            done[r["config_hash"]] = r
    return done


def git_commit() -> str:
    """The commit of the avbench checkout, with '-dirty' if it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
