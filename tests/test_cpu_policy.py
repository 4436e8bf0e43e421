"""The OpenMP wait policy a sweep picks: from its workers x threads, the cores, and the load others
put on the machine; the user's OMP_WAIT_POLICY always wins, and run records name the policy."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from bench.records import read_records
from bench.sweep import cpu, executors
from bench.sweep.cpu import busy_cores, choose_wait_policy, thread_env, usable_cores


@pytest.fixture(autouse=True)
def no_user_policy(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)


@pytest.mark.parametrize("workers, threads, cores, busy, expected", [
    (1, 2, 2, 0.00, "ACTIVE"),   # the idle 2-core machine of the benchmark
    (1, 2, 2, 0.20, "ACTIVE"),   # daemons and noise: below FREE_CORE_SLACK
    (1, 2, 2, 0.40, "PASSIVE"),  # a core partly used by another process is not spun on
    (1, 2, 2, 1.00, "PASSIVE"),  # one CPU-bound process beside the sweep
    (2, 4, 8, 0.05, "ACTIVE"),
    (2, 4, 8, 1.00, "PASSIVE"),  # 8 threads on the 7 cores others leave free
    (2, 3, 8, 1.90, "ACTIVE"),   # 6 threads on the 6 free cores
    (2, 1, 2, 0.00, "PASSIVE"),  # one thread per run: nothing to spin for
])
def test_policy_follows_free_cores(workers, threads, cores, busy, expected):
    choice = choose_wait_policy(workers, threads, cores, lambda: busy)
    assert choice.policy == expected and not choice.user_set
    assert f"{workers * threads} of {cores} cores" in choice.message()
    assert "override with OMP_WAIT_POLICY=ACTIVE|PASSIVE" in choice.message()


def test_the_users_policy_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    choice = choose_wait_policy(1, 2, 2, lambda: 0.0)
    assert (choice.policy, choice.user_set) == ("PASSIVE", True)
    assert "your OMP_WAIT_POLICY" in choice.message()
    assert thread_env(2, "ACTIVE")["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert thread_env(2, "ACTIVE") == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                                       "OPENBLAS_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}


def test_busy_cores_sees_a_cpu_bound_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = busy_cores(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.6 <= busy <= usable_cores() + 0.01, busy


def test_busy_cores_falls_back_to_the_load_average(monkeypatch):
    monkeypatch.setattr(cpu, "_cpu_times", lambda cpus: None)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (123.0, 0.0, 0.0))
    assert busy_cores(0.0) == usable_cores()


@pytest.mark.skipif(usable_cores() < 2, reason="a multi-thread worker needs 2 cores")
@pytest.mark.parametrize("other_load, expected", [(0.0, "ACTIVE"), (1.0, "PASSIVE")])
def test_a_sweeps_workers_get_the_chosen_policy(tiny_corpus, tmp_path, monkeypatch, caplog,
                                                other_load, expected):
    from bench.cli import main

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # one worker gets every core
    # A data folder of its own: features cached here must not turn other tests' first runs into cache hits.
    monkeypatch.setenv("AVBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(executors, "usable_cores", lambda: 2)
    monkeypatch.setattr(executors, "busy_cores", lambda: other_load)
    records = tmp_path / "runs.jsonl"
    config = tmp_path / "sweep.yaml"
    config.write_text(f"""
tasks: ["{tiny_corpus.path}"]
encoders: [mfcc39]
train: {{epochs: 1, lr: 1.0e-3, batch_size: 8, hidden: 16, layers: 1}}
records: {records}
""")
    with caplog.at_level(logging.INFO, logger="avbench.executors"):
        assert main(["sweep", str(config), "--workers", "1"]) == 0
    assert f"OpenMP wait policy {expected}: 1 worker(s) x 2 thread(s) = 2 of 2 cores" in caplog.text
    (record,) = read_records(records)
    assert (record["threads"], record["omp_wait_policy"]) == (2, expected)


def test_the_load_is_measured_only_when_it_decides(monkeypatch):
    def unwanted() -> float:
        raise AssertionError("the load was measured for a choice it cannot change")

    assert choose_wait_policy(2, 1, 2, unwanted).policy == "PASSIVE"  # one thread per run
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert choose_wait_policy(1, 2, 2, unwanted).policy == "ACTIVE"  # the user's setting
