"""What a study cost, by stage, as a pure function of its records: the pretraining of the checkpoints
its runs evaluate, the frozen encoders' feature extraction, and the downstream training and tests.

A run record's `wall_seconds` covers the whole run (features, training, its cross-corpus tests);
its `counters.feature_seconds` (recorded since that counter exists) is the feature stage's part.
Runs recorded before it existed keep their feature time inside the downstream stage, and the table
says how many. Wall times are per job; core-hours weigh each job by the threads it ran on, so
runs made in parallel add up to the machine time they took, not to the time a person waited.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass
class StageCost:
    stage: str
    jobs: int
    seconds: float          # wall seconds, summed over the jobs
    core_seconds: float     # each job's wall seconds x its threads
    median_seconds: float | None
    devices: str            # e.g. "cpu (AMD EPYC), 1 thread"
    note: str = ""


def _devices(records: list[dict[str, Any]]) -> str:
    kinds = sorted({(r.get("device"), r.get("device_name"), r.get("threads")) for r in records}, key=str)
    return "; ".join("device not recorded" if device is None else
                     f"{device}" + (f" ({name})" if name else "")
                     + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
                     for device, name, threads in kinds)


def _stage(name: str, records: list[dict[str, Any]], seconds: list[float], note: str = "") -> StageCost:
    threads = [max(1, int(r.get("threads") or 1)) for r in records]
    return StageCost(stage=name, jobs=len(records), seconds=round(sum(seconds), 1),
                     core_seconds=round(sum(s * t for s, t in zip(seconds, threads)), 1),
                     median_seconds=round(statistics.median(seconds), 1) if seconds else None,
                     devices=_devices(records), note=note)


def study_costs(records: list[dict[str, Any]], builds: list[dict[str, Any]]) -> list[StageCost]:
    """Stages (pretraining, features, downstream) and their total. `records`: the study's ok run
    records, cross-corpus tests included (they share their run's wall time, so they are not counted
    again); `builds`: the pretraining records of the checkpoints those runs evaluate."""
    runs = [r for r in records if not r.get("eval_of") and r.get("wall_seconds") is not None]
    stages = []
    if builds:
        stages.append(_stage("pretraining", list(builds), [float(b.get("seconds") or 0.0) for b in builds],
                             "one job per checkpoint, resumed calls included"))
    timed = [r for r in runs if "feature_seconds" in (r.get("counters") or {})]
    if timed:
        stages.append(_stage("feature extraction (frozen encoders, cached)", timed,
                             [float(r["counters"]["feature_seconds"]) for r in timed],
                             f"{sum(1 for r in timed if (r['counters'].get('cache_misses') or 0) > 0)} run(s) "
                             "extracted; the rest read the cache"))
    if runs:
        untimed = len(runs) - len(timed)
        stages.append(_stage("downstream training and tests", runs,
                             [float(r["wall_seconds"]) - float((r.get("counters") or {}).get("feature_seconds", 0.0))
                              for r in runs],
                             f"{untimed} run(s) recorded before feature time was measured count their feature "
                             "extraction here" if untimed else "both corpora's tests included"))
    if stages:
        # Jobs: checkpoints and runs (feature extraction is a part of its run, not a job of its own).
        stages.append(StageCost(stage="total", jobs=len(builds) + len(runs),
                                seconds=round(sum(s.seconds for s in stages), 1),
                                core_seconds=round(sum(s.core_seconds for s in stages), 1),
                                median_seconds=None, devices=_devices(list(builds) + runs)))
    return stages


def hours_text(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h ({seconds:,.0f} s)"
