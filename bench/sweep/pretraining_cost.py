"""The cost of a sweep's pretraining stages, for `avbench sweep --dry-run`.

A checkpoint to build is costed from earlier builds of the same identity (the pretraining records'
seconds per step, on the device they name), else from a 3-step probe of its objective on this
machine, shown as such: the probe's first step includes warm-up, so it errs on the slow side.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
from dataclasses import replace

from bench.sweep.pretraining import Stage, stage_of

log = logging.getLogger("avbench.sweep")

PROBE_STEPS = 3


def probe_seconds_per_step(stage: Stage, device: str = "auto") -> tuple[float, str]:
    """Train the entry's objective for PROBE_STEPS steps in a scratch folder: (seconds per step, device name)."""
    from bench.pretrain.loop import pretrain

    probe = replace(stage.config, steps=PROBE_STEPS, epochs=None, save_every=PROBE_STEPS, log_every=1)
    with tempfile.TemporaryDirectory(prefix="avbench-probe-") as out:
        summary = pretrain(probe, out, progress=False, device=device)
    return summary["seconds"] / max(1, summary["step"]), summary.get("device_name") or summary.get("device", "?")


def steps_done(stage: Stage) -> int:
    """Steps a killed build of this identity reached here (its resume point), else 0."""
    try:
        return int(json.loads((stage.folder / "pretrain.json").read_text()).get("step", 0))
    except (OSError, ValueError):
        return 0


def stage_estimate(stage: Stage, device: str) -> tuple[float, str]:
    """(seconds left, where the figure comes from) of a checkpoint to build."""
    left = stage.total_steps - steps_done(stage)
    timed = [r for r in stage.records if r.get("seconds") and r.get("step")]
    if timed:
        per_step = statistics.median(r["seconds"] / r["step"] for r in timed)
        where = sorted({str(r.get("device_name") or r.get("device") or "?") for r in timed})
        return left * per_step, f"{len(timed)} earlier build(s) of this identity ({', '.join(where)})"
    try:
        per_step, name = probe_seconds_per_step(stage, device)
    except Exception as exc:  # noqa: BLE001 - the build itself will report it; the plan goes on
        log.debug("probe of %s failed", stage.name, exc_info=True)
        return 0.0, f"not costed: the {PROBE_STEPS}-step probe failed ({type(exc).__name__}: {exc})"
    return left * per_step, f"{PROBE_STEPS}-step probe here ({name}, {per_step:.2f} s/step)"


def pretraining_report(stages: list[Stage], remaining_encoders: set[str], device: str = "auto"
                       ) -> tuple[list[str], float]:
    """Lines of the dry-run report for the pretraining stages, and their total estimated seconds."""
    if not stages:
        return [], 0.0
    rows, total = [], 0.0
    for stage in stages:
        needed = any(stage_of(encoder, [stage]) for encoder in remaining_encoders)
        seconds, source = 0.0, "-"
        if stage.problem:
            status = "cannot start (below)"
        elif stage.complete:
            unlike = f", not a recorded build: {', '.join(stage.recorded_hashes)}" if stage.unlike_recorded() else ""
            status = f"complete here (checkpoint {stage.checkpoint_hash}{unlike})"
        elif not needed:
            builds = ", ".join(stage.recorded_hashes) or "?"
            status = f"not needed: its runs are recorded (checkpoint {builds})"
        else:
            done = steps_done(stage)
            status = f"to build, resuming at step {done}" if done else "to build"
            seconds, source = stage_estimate(stage, device)
        total += seconds
        rows.append((stage.name, stage.config.encoder, str(stage.total_steps or "?"), stage.identity or "?", status,
                     f"{seconds / 3600:.2f}", source))
    header = ("entry", "encoder", "steps", "identity", "status", "est. hours", "from")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(6)]
    aligned = (str.ljust, str.ljust, str.rjust, str.ljust, str.ljust, str.rjust)
    lines = [f"pretraining: {len(stages)} checkpoint(s), built before the runs that evaluate them"]
    for row in [header, *rows, ("total", "", "", "", "", f"{total / 3600:.2f}", "")]:
        lines.append("  " + " ".join(align(cell, width) for align, cell, width in zip(aligned, row, widths))
                     + f"  {row[6]}".rstrip())
    problems: dict[str, list[str]] = {}
    for stage in stages:
        if stage.problem:
            problems.setdefault(stage.problem, []).append(stage.name)
    lines += [f"  {', '.join(names)} cannot start: {problem}" for problem, names in problems.items()]
    lines += [f"  {stage.name}: {why}" for stage in stages if (why := stage.unlike_recorded())]
    return lines, total
