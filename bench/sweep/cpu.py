"""The CPU a sweep runs on: usable cores, threads per run, the load already on the machine, and the
OpenMP wait policy each run process gets.

Why the wait policy is chosen per sweep: a worker's idle OpenMP threads either spin (ACTIVE) or
sleep (PASSIVE) between parallel regions. The BiGRU opens many small regions, so on cores the
sweep has to itself spinning is faster (benchmarks/loop_benchmark.py: 1.49x at 2 threads on an
idle 2-core machine). On cores another process is using, spinning threads take its time slices
and wait for each other's: a 2-thread BiGRU epoch took 5.9-29 s against 1.7-2.1 s sleeping. So
the sweep spins only when its workers x threads fit in the cores nobody else is using at start.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

from bench.errors import ConfigError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Other processes' load, in cores, under which a core still counts as free. An idle machine
# reads 0.00-0.10 here (daemons, this process's own start); one CPU-bound process reads ~1.0.
FREE_CORE_SLACK = 0.25
LOAD_SAMPLE_SECONDS = 0.5


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def user_thread_cap() -> int | None:
    """OMP_NUM_THREADS from the environment as a positive int, or None when unset.

    Raises a ConfigError for a value torch would reject later in every worker."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        cap = int(value)
    except ValueError:
        cap = 0
    if cap < 1:
        raise ConfigError(f"OMP_NUM_THREADS={value!r} in the environment: it must be a positive "
                          "integer (the most threads each run may use); unset it to let the "
                          "sweep give each worker cores // workers threads")
    return cap


def thread_env(threads: int, wait_policy: str = "PASSIVE") -> dict[str, str]:
    """Environment for a run process with `threads` compute threads (set before torch is imported).

    `wait_policy` is the sweep's choice (see choose_wait_policy); the user's own OMP_WAIT_POLICY
    always wins over it.
    """
    return {**dict.fromkeys(THREAD_VARS, str(threads)),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", wait_policy)}


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over `cpus` from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        total += sum(values)
        busy += sum(values) - idle
    return (busy, total) if total else None


def busy_cores(seconds: float = LOAD_SAMPLE_SECONDS) -> float:
    """How many of this process's usable cores other processes keep busy now, in cores.

    Sampled from /proc/stat over `seconds` (this process sleeps meanwhile, so the reading is the
    others'); where /proc/stat is missing (macOS), the 1-minute load average, capped at the cores.
    """
    cores = usable_cores()
    cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(cores))
    before = _cpu_times(cpus)
    if before is not None:
        time.sleep(seconds)
        after = _cpu_times(cpus)
        if after is not None and after[1] > before[1]:
            return cores * (after[0] - before[0]) / (after[1] - before[1])
    try:
        return min(float(cores), os.getloadavg()[0])
    except OSError:
        return 0.0


@dataclass(frozen=True)
class WaitPolicy:
    """The OpenMP wait policy a sweep's run processes get, and why."""

    policy: str
    reason: str
    user_set: bool = False

    def message(self) -> str:
        how = ("your OMP_WAIT_POLICY" if self.user_set else
               "override with OMP_WAIT_POLICY=ACTIVE|PASSIVE in the environment")
        return f"OpenMP wait policy {self.policy}: {self.reason} ({how})"


def choose_wait_policy(workers: int, threads: int, cores: int, busy: Callable[[], float]) -> WaitPolicy:
    """ACTIVE when the sweep's workers x threads fit in the cores others leave free, else PASSIVE.

    `busy` measures other processes' load in cores (busy_cores), called only when the answer
    depends on it: not when the user set OMP_WAIT_POLICY (which wins), nor with one thread per run.
    A core counts as taken from FREE_CORE_SLACK of load on, so a half-busy core is not spun on.
    """
    user = os.environ.get("OMP_WAIT_POLICY", "").strip()
    if user:
        return WaitPolicy(user, "set in the environment", user_set=True)
    demand = f"{workers} worker(s) x {threads} thread(s) = {workers * threads} of {cores} cores"
    if threads == 1:
        return WaitPolicy("PASSIVE", f"{demand}: one thread per run never waits for another")
    load = busy()
    free = max(0, cores - max(0, math.ceil(load - FREE_CORE_SLACK)))
    if workers * threads <= free:
        return WaitPolicy("ACTIVE", f"{demand}, other load {load:.2f} cores: the sweep has its cores "
                                    "to itself, idle threads spin")
    return WaitPolicy("PASSIVE", f"{demand}, other load {load:.2f} cores: cores are shared, idle threads "
                                 "sleep (spinning on shared cores was up to 20x slower)")
