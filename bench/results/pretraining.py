"""The pretraining records beside the run records (`runs.jsonl` -> `runs.pretraining.jsonl`, one
JSON object a line, appended by bench.pretrain.stage) as the tables show them: the README's table of
pretraining runs, one row per checkpoint identity, and results.md's note of the budget and wall time
behind each checkpointed row. A pure function of the records (and the files they name).

A pretraining identity may have several records (a resumed build appends one, so does a rebuild on
another machine): its latest successful record is the one shown, and the others are counted.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.records import pretraining_records_path

LINKED_SUFFIXES = (".png", ".csv", ".txt", ".json")


def checkpoint_hash(record: dict[str, Any]) -> str | None:
    """The 16 hex digits that the run records evaluating this checkpoint store as `checkpoint_hash`."""
    return record.get("checkpoint_hash") or (record.get("checkpoint_sha256") or "")[:16] or None


def latest_builds(pretraining: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """(latest ok record, number of records of its build) per checkpoint: per identity and checkpoint
    hash, since a rebuild on a machine that did not reproduce the bits is another checkpoint of the
    same identity. Ordered by name, identity, then hash."""
    latest: dict[tuple[str, str], dict] = {}
    counts: dict[tuple[str, str], int] = {}
    for record in pretraining:
        key = build_key(record)
        counts[key] = counts.get(key, 0) + 1
        if record["status"] == "ok":
            latest[key] = record
    return [(r, counts[k]) for k, r in sorted(latest.items(), key=lambda kv: (kv[1].get("name") or "", kv[0]))]


def budget_text(record: dict[str, Any]) -> str:
    """`400 steps x batch 8, 1 s crops (0.37 epochs)`, from the record's steps, settings and clip count."""
    settings = record.get("settings") or {}
    step, total, batch = record.get("step"), record.get("total_steps"), settings.get("batch_size")
    text = f"{step} steps" if total in (None, step) else f"{step} of {total} steps"
    text += f" x batch {batch if batch is not None else '?'}"
    if settings.get("crop_seconds") is not None:
        text += f", {settings['crop_seconds']:g} s crops"
    clips = record.get("clips")
    if clips and step is not None and batch:
        text += f" ({step * batch / clips:.2f} epochs)"
    return text


def trained_text(record: dict[str, Any]) -> str:
    """`apc`, or `resnet18 + supervised (labels: speaker)` when an objective other than the
    encoder's own trained it (records from before objectives were separate name none)."""
    encoder, objective = record.get("encoder"), record.get("objective")
    if not objective or objective == encoder:
        return str(encoder)
    labels = record.get("labels")
    # The manifests' `label` column holds the spoken word, so readers see "words", not "label".
    labels = {"label": "words"}.get(labels, labels)
    return f"{encoder} + {objective}" + (f" (labels: {labels})" if labels else "")


# A loss that ends within 5% of where it started says its objective barely moved the encoder (unless a
# metric logged beside it moved, see movement_text); the report flags it beside the budget.
BARELY_MOVED = 0.05


@dataclass(frozen=True)
class LossMovement:
    """How far a build's logged curve (its loss.csv) moved: the mean of each quantity over the first
    and over the last tenth of the logged rows, so one noisy step decides nothing."""
    first: float
    last: float
    first_steps: tuple[int, int]
    last_steps: tuple[int, int]
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # logged metrics, first -> last

    @property
    def change(self) -> float:
        return (self.last - self.first) / abs(self.first) if self.first else math.inf

    @property
    def barely_moved(self) -> bool:
        return abs(self.change) < BARELY_MOVED


def loss_movement(build: dict[str, Any], records_dir: Path) -> LossMovement | None:
    """The movement of the loss curve kept in the build's folder (`files`), or None when no curve of two
    or more rows is kept. A curve without a numeric `loss` column is an error naming the file."""
    path = records_dir / build["files"] / "loss.csv" if build.get("files") else None
    if path is None or not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        return None
    # Loss parts (loss_<worker>) are plotted beside the loss; only the other logged quantities are metrics.
    names = [k for k in rows[0] if k not in ("step", "epoch", "loss") and not k.startswith("loss_")]
    try:
        values = {k: [float(r[k]) for r in rows] for k in ["step", "loss", *names]}
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path}: the pretraining curve needs numeric `step` and `loss` columns in every row "
                          f"({error!r}); rebuild it with `avbench pretrain`, or remove `files` from the pretraining "
                          f"record of {build['identity']}.") from None
    n = max(1, len(rows) // 10)

    def ends(column: list[float]) -> tuple[float, float]:
        return sum(column[:n]) / n, sum(column[-n:]) / n

    steps = [int(s) for s in values["step"]]
    return LossMovement(*ends(values["loss"]), (steps[0], steps[n - 1]), (steps[-n], steps[-1]),
                        {k: ends(values[k]) for k in names})


def movement_text(movement: LossMovement) -> str:
    """`its loss went from 3.62 (mean of steps 5-40) to 3.34 (steps 365-400), -7.7%; accuracy 0.056 -> 0.081`."""
    text = (f"its loss went from {movement.first:.4g} (mean of steps {movement.first_steps[0]}-"
            f"{movement.first_steps[1]}) to {movement.last:.4g} (steps {movement.last_steps[0]}-"
            f"{movement.last_steps[1]}), {100 * movement.change:+.1f}%")
    text += "".join(f"; {name} {a:.3g} -> {b:.3g}" for name, (a, b) in movement.metrics.items())
    if movement.barely_moved:
        # Not "untrained": a loss against a moving target (MoCo's filling queue) can stay flat while the
        # task improves, which the metrics logged beside it show.
        text += (f". The loss moved less than {BARELY_MOVED:.0%} of its start over the whole budget: read this "
                 "checkpoint as barely trained unless a metric logged beside it moved")
    return text


def loss_movements(pretraining: list[dict[str, Any]], records_dir: Path) -> dict[tuple[str, str], LossMovement]:
    """(identity, checkpoint hash) -> its loss movement, for each latest build that kept a curve."""
    found = {}
    for build, _ in latest_builds(pretraining):
        movement = loss_movement(build, records_dir)
        if movement is not None:
            found[build_key(build)] = movement
    return found


def build_key(build: dict[str, Any]) -> tuple[str, str]:
    """A checkpoint's key: its identity and hash (one identity may have several builds; latest_builds)."""
    return build["identity"], checkpoint_hash(build) or ""


def wall_text(record: dict[str, Any]) -> str:
    """`370 s on cpu, fp32`: the build's total training wall time (all its calls) and where it ran."""
    seconds = record.get("seconds")
    text = "?" if seconds is None else f"{seconds:,.0f} s"
    where = record.get("device_name") or record.get("device")
    if where:
        text += f" on {where}"
    return text + (f", {record['precision']}" if record.get("precision") else "")


def evaluated_by(build: dict[str, Any], records: list[dict[str, Any]]) -> int:
    """How many of `records` evaluated this build's checkpoint (by its hash, or by its identity)."""
    digest = checkpoint_hash(build)
    # The checkpoint's content names it; an identity alone may cover several builds (rebuilt on
    # machines that did not reproduce each other's bits), so it counts only where no hash is known.
    return sum(1 for r in records if (digest and r.get("checkpoint_hash") == digest)
               or ((not digest or not r.get("checkpoint_hash")) and r.get("pretraining_identity") == build["identity"]))


def _files(build: dict[str, Any], records_dir: Path, out_dir: Path) -> str:
    folder = records_dir / build["files"] if build.get("files") else None
    if folder is None or not folder.is_dir():
        return "—"
    return ", ".join(f"[{f.name}]({Path(os.path.relpath(f, out_dir)).as_posix()})" for f in sorted(folder.iterdir())
                     if f.suffix in LINKED_SUFFIXES) or "—"


def render_pretraining(pretraining: list[dict[str, Any]], records: list[dict[str, Any]], records_path: Path,
                       out_dir: Path) -> str:
    """The README's pretraining section: one row per checkpoint identity of the pretraining records
    beside `records_path`, with the run `records` (every tabled one) that evaluated it; then the
    failed builds and the folders under pretraining/ that no record names, counted."""
    records_dir = records_path.parent
    builds = latest_builds(pretraining)
    named = {(records_dir / r["files"]).resolve() for r in pretraining if r.get("files")}
    strays = sorted(d for d in (records_dir / "pretraining").glob("*") if d.is_dir() and d.resolve() not in named)
    failed = [r for r in pretraining if r["status"] == "failed"]
    if not (builds or strays or failed):
        return ""
    out = io.StringIO()
    out.write(f"\n## Pretraining runs\n\nFrom `{pretraining_records_path(records_path).name}`: one row per "
              "checkpoint (pretraining identity), from its latest successful record; its loss curve and frame "
              "grids are kept beside the records, the checkpoints stay out of git. Wall: the build's training "
              "time, all its calls. Evaluated by: the tabled run records whose `checkpoint_hash` is the "
              "checkpoint's (or whose `pretraining_identity` is its identity). Final loss: in brackets, how far "
              "the mean loss of the curve's last tenth moved from its first tenth; ⚠ where it moved less than "
              f"{BARELY_MOVED:.0%}.\n\n| name | identity | encoder + objective | "
              "data | budget | wall | final loss | checkpoint | evaluated by | files |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")
    for build, count in builds:
        final_loss, movement = build.get("final_loss"), loss_movement(build, records_dir)
        final = "—" if final_loss is None else f"{final_loss:.4g}"
        if final_loss is not None and movement is not None:
            final += f" ({100 * movement.change:+.1f}%)" + (" ⚠" if movement.barely_moved else "")
        out.write(f"| {build.get('name') or '—'} | `{build['identity']}`{f' ({count} records)' if count > 1 else ''} "
                  f"| {trained_text(build)} | {build.get('data_name')} (manifest {build.get('manifest_id', '?')}) "
                  f"| {budget_text(build)} | {wall_text(build)} | {final} "
                  f"| `{checkpoint_hash(build) or '?'}` | {evaluated_by(build, records)} record(s) "
                  f"| {_files(build, records_dir, out_dir)} |\n")
    imported = [b.get("name") or b["identity"] for b, _ in builds if b.get("imported_from")]
    if imported:
        out.write(f"\n{len(imported)} record(s) imported from the `pretrain.json` of a build made before the "
                  f"pretraining stage existed: {', '.join(imported)}.\n")
    if failed:
        out.write(f"\n{len(failed)} failed pretraining attempt(s): "
                  + "; ".join(f"`{r['identity']}`: {r.get('error') or 'no error recorded'}" for r in failed) + ".\n")
    if strays:
        links = ", ".join(f"[{d.name}]({Path(os.path.relpath(d, out_dir)).as_posix()})" for d in strays)
        out.write(f"\n{len(strays)} folder(s) under pretraining/ named by no pretraining record (no budget or "
                  f"wall time to show): {links}.\n")
    return out.getvalue()


def checkpoint_note(rows: list[tuple[str, list[dict[str, Any]]]], pretraining: list[dict[str, Any]]) -> str:
    """results.md's note after a table: per checkpointed row (display name, its records), the budget and
    wall time of the pretraining record whose checkpoint hash (or identity) its records name."""
    builds = [b for b, _ in latest_builds(pretraining)]
    by_hash = {checkpoint_hash(b): b for b in reversed(builds) if checkpoint_hash(b)}
    by_identity = {b["identity"]: b for b in builds}
    lines: dict[tuple[str, str], str] = {}
    for label, records in rows:
        for r in records:
            named = r.get("checkpoint_hash") or r.get("pretraining_identity")
            if not named:
                continue
            build = by_hash.get(r.get("checkpoint_hash")) or by_identity.get(r.get("pretraining_identity"))
            lines.setdefault((label, named), "no pretraining record" if build is None else
                             f"{budget_text(build)}; {wall_text(build)} ({build.get('name') or build['identity']})")
    if not lines:
        return ""
    labels = [label for label, _ in lines]
    return "\nPretraining:\n\n" + "".join(f"- {label}{f' ({named})' if labels.count(label) > 1 else ''}: {text}\n"
                                           for (label, named), text in lines.items())
