"""The Ray executor (optional extra `avbench[ray]`): a sweep run as Ray tasks on a local Ray
instance records the same results as the local executor."""

from __future__ import annotations

import pytest

from bench.records import read_records
from bench.sweep.config import load_sweep
from bench.sweep.executors import LocalExecutor, RayExecutor
from bench.sweep.run import run_sweep

ray = pytest.importorskip("ray")

TIMING_AND_HOST = ("wall_seconds", "git_commit", "resumed_from_epoch", "threads", "omp_wait_policy",
                   "counters")  # see test_sweep.py


def comparable(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in TIMING_AND_HOST}
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in record["history"]]
    return out


@pytest.fixture(autouse=True)
def _keep_builtins_print():
    # Ray replaces builtins.print in the driver (ray.experimental.tqdm_ray); later tests in this
    # process must see the real one.
    import builtins

    real = builtins.print
    yield
    builtins.print = real


def test_ray_sweep_records_what_the_local_executor_records(tiny_corpus, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(f"""
tasks: ["{tiny_corpus.path}"]
encoders: [mfcc39]
seeds: [0, 1]
train: {{epochs: 2, lr: 1.0e-3, batch_size: 8, hidden: 16, layers: 1}}
""")
    results = {}
    # Both with one torch thread per run (Ray: cpus_per_run=1; local: two workers on two cores),
    # so the arithmetic, and with it every number recorded, is the same.
    for name, executor in (("local", LocalExecutor(workers=2, cores=2)),
                           ("ray", RayExecutor(cpus_per_run=1, num_cpus=2))):
        sweep = load_sweep(config)
        sweep.records = tmp_path / f"{name}.jsonl"
        summary = run_sweep(sweep, progress=False, executor=executor)
        assert (summary["ran"], summary["failed"]) == (2, []), name
        results[name] = {r["config_hash"]: comparable(r) for r in read_records(sweep.records)}
    assert not ray.is_initialized(), "the executor shuts down the Ray instance it started"
    assert len(results["ray"]) == 2 and results["ray"] == results["local"]
    assert {r["threads"] for r in read_records(tmp_path / "ray.jsonl")} == {1}
