"""Where the jobs of a sweep execute: in this process, in local worker processes, or on Ray.

Executors take jobs (plain dicts: a run's RunConfig fields, or a pretraining checkpoint's
PretrainConfig fields, see `Job`) and yield an outcome per job as it finishes. Results travel only
through the records files: a run appends its own record (bench.records.append_record: one write
under flock, so workers never interleave), and a pretraining build its own to the pretraining
records beside them (bench.pretrain.stage). A job that raises is recorded as failed, with its
traceback, by the process that ran it; a worker that dies without answering (SIGKILL, the OOM
killer, a segfault) is recorded as failed by the sweep, with its exit code; the sweep goes on.

inline: one run after another in this process (the library default; sees in-process plugins).

local: N spawned worker processes. 'spawn', so that each sets OMP/MKL/OpenBLAS threads (and
CUDA_VISIBLE_DEVICES) before it imports torch, which sizes its thread pool at start-up; each gets
max(1, cores // N) threads, or fewer where the user set OMP_NUM_THREADS (a cap, so a sweep on a
shared machine uses no more threads than asked). Workers share the feature cache safely:
FeatureCache holds a per-key flock while it builds an entry and publishes it by one rename, so a
key is built once and never read half-written. Idle OpenMP threads spin (ACTIVE) when the
workers x threads fit in the cores other processes leave free at the sweep's start, else sleep
(PASSIVE); bench.sweep.cpu.choose_wait_policy, and the user's OMP_WAIT_POLICY wins.

ray: each run a Ray task declaring `cpus_per_run` CPUs and `gpus_per_run` GPUs, on the cluster at
`address` or on a Ray instance started here. On a cluster, every node needs avbench (and any
--plugin module) installed, and AVBENCH_DATA (corpora, feature cache, per-epoch run state) and the
records file on a filesystem all nodes see at the same path, with working flock (NFSv4, not v3
without lockd). The driver's AVBENCH_DATA goes in each task's runtime_env env_vars, the records
path is made absolute, and tasks work in the driver's current folder so relative task paths
agree. Ray retries nothing (max_retries=0): a failure is recorded and a re-run of the sweep
retries it. Ray tasks sleep when idle (PASSIVE): Ray packs other tasks onto the same cores, and
this process cannot see a remote node's load. Ray is an optional extra (`pip install avbench[ray]`),
imported only when asked for.
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Iterable, Iterator

from bench.errors import ConfigError
from bench.files import LockBusy, file_sha256
from bench.records import append_record, git_commit, pretraining_records_path
from bench.sweep.cpu import busy_cores, choose_wait_policy, thread_env, usable_cores, user_thread_cap

log = logging.getLogger("avbench.executors")

# A run {"index": int, "label": str, "config": dict of RunConfig fields}, or a pretraining checkpoint
# {"index", "label", "kind": "pretraining", "name": entry, "pretraining": dict of PretrainConfig fields}.
Job = dict[str, Any]


def record_failure(records: str | Path, config: dict, error: str, trace: str | None = None) -> None:
    """Append a failed-run record: the sweep summary and the next re-run rely on it."""
    append_record(records, {"status": "failed", "config": config, "error": error, "traceback": trace,
                            "git_commit": git_commit(),
                            **{k: config.get(k) for k in ("encoder", "task", "task_type", "mode",
                                                          "label_fraction", "k_shot", "seed")}})


def execute_run(config: dict, records: str | Path, *, force: bool = False, progress: bool = False,
                device: str = "auto", wait: bool = True) -> dict:
    """Run one configuration in this process and return its outcome; a raising run is recorded. With
    `wait=False`, a run that another process is running is not waited for: its outcome is "busy"."""
    from bench.evaluate.identity import RunConfig
    from bench.evaluate.run import run_experiment

    try:
        record = run_experiment(RunConfig.from_dict(config), records, force=force, progress=progress, device=device,
                                wait=wait)
    except KeyboardInterrupt:
        raise
    except LockBusy:
        return {"status": "busy"}
    except Exception as exc:  # one broken run must not cost the rest of the sweep
        error = f"{type(exc).__name__}: {exc}"
        record_failure(records, config, error, traceback.format_exc())
        return {"status": "failed", "error": error}
    return {"status": "skipped" if record.get("skipped") else "ok",
            **{k: record.get(k) for k in ("config_hash", "test_acc", "val_acc", "best_epoch", "wall_seconds")}}


def execute_pretraining(job: Job, records: str | Path, *, progress: bool = False, device: str = "auto") -> dict:
    """Build (or resume, or find built) one pretraining checkpoint; its record goes to the pretraining
    records beside `records`, and so does a failure."""
    from bench.pretrain.loop import PretrainConfig
    from bench.pretrain.stage import ensure_pretrained

    target = pretraining_records_path(records)
    try:
        config = PretrainConfig(**{**job["pretraining"], "splits": tuple(job["pretraining"]["splits"])})
        built = ensure_pretrained(config, device=device, records=target, progress=progress, name=job["name"])
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the runs that need it are reported as not run; the others go on
        error = f"{type(exc).__name__}: {exc}"
        record_pretraining_failure(target, job, error, traceback.format_exc())
        return {"status": "failed", "error": error}
    return {"status": "ok" if built.built else "skipped", "identity": built.identity,
            "final_loss": built.summary.get("final_loss"), "seconds": built.summary.get("seconds"),
            "checkpoint_hash": file_sha256(built.encoder_path)[:16]}


def record_pretraining_failure(target: str | Path, job: Job, error: str, trace: str | None = None) -> None:
    append_record(target, {"kind": "pretraining", "status": "failed", "name": job["name"], "identity": job["identity"],
                           "settings": job["pretraining"], "error": error, "traceback": trace,
                           "git_commit": git_commit()})


def execute_job(job: Job, records: str | Path, *, force: bool = False, progress: bool = False,
                device: str = "auto") -> dict:
    """One job of either kind: a pretraining checkpoint or a run (`job["wait"]`: see execute_run)."""
    if job.get("kind") == "pretraining":
        return execute_pretraining(job, records, progress=progress, device=device)
    return execute_run(job["config"], records, force=force, progress=progress, device=device,
                       wait=job.get("wait", True))


def record_job_failure(records: str | Path, job: Job, error: str, trace: str | None = None) -> None:
    """A job whose process died without answering: recorded as failed where its kind is recorded."""
    if job.get("kind") == "pretraining":
        record_pretraining_failure(pretraining_records_path(records), job, error, trace)
    else:
        record_failure(records, job["config"], error, trace)


def import_plugins(plugins: Iterable[str]) -> None:
    from bench.registry import import_plugin

    for plugin in plugins:
        import_plugin(plugin)


class InlineExecutor:
    """One run after another in this process."""

    def __init__(self, progress: bool = True, device: str = "auto") -> None:
        self.progress, self.device = progress, device

    def execute(self, jobs: list[Job], records: Path, *, force: bool = False,
                plugins: Iterable[str] = ()) -> Iterator[tuple[Job, dict]]:
        for job in jobs:
            log.info("%s", job["label"])
            yield job, execute_job(job, records, force=force, progress=self.progress, device=self.device)


def visible_gpus() -> list[str]:
    """GPU ids a worker may be pinned to: CUDA_VISIBLE_DEVICES if set, else every CUDA device."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker when the sweep process dies (Linux).

    A sweep killed by a signal runs no clean-up, and a worker left behind would go on training
    and append records beside those of the sweep that is re-run. Elsewhere, the pipe to the
    parent breaks and the worker stops after its current run.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def _worker_main(conn, env: dict[str, str], plugins: list[str], log_level: int, parent: int) -> None:
    """A local worker: set threads before torch loads, then run jobs until the sweep closes the pipe."""
    _die_with_parent(parent)
    os.environ.update(env)
    import torch

    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    torch.set_flush_denormal(True)  # before torch's pool starts: see bench.runtime.flush_denormals
    logging.basicConfig(level=log_level, format=f"%(levelname)s %(name)s [worker {os.getpid()}]: %(message)s")
    import_plugins(plugins)
    try:
        while True:
            try:
                job = conn.recv()
            except EOFError:  # the sweep process is gone
                return
            conn.send(execute_job(job, job["records"], force=job["force"], device=job["device"]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the sweep reports it
        return


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else f"signal {-exitcode}"
        return f"worker process killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"worker process died with exit code {exitcode}"


class LocalExecutor:
    """Runs in `workers` processes on this machine, each pinned to its share of the cores (and GPU).

    Concurrency: `workers` if given; else `runs_per_device` per visible GPU, or `runs_per_device`
    on a CPU-only machine (the machine is the device); else one per core (one per GPU with GPUs).

    Device: each worker sees one GPU (CUDA_VISIBLE_DEVICES), which `auto` and `cuda` then mean;
    `cuda:N` keeps the sweep on visible GPU N; `cpu` pins no GPU and runs one worker per core.
    """

    def __init__(self, workers: int | None = None, runs_per_device: int | None = None,
                 gpus: list[str] | None = None, cores: int | None = None, device: str = "auto") -> None:
        if (workers is not None and workers < 1) or (runs_per_device is not None and runs_per_device < 1):
            raise ValueError("--workers and --runs-per-device must be at least 1")
        self.gpus = visible_gpus() if gpus is None else gpus
        self.device = "cuda" if device.startswith("cuda") else device
        if device == "cpu":
            self.gpus = []
        elif device.startswith("cuda:"):
            index = int(device.split(":")[1])
            if index >= len(self.gpus):
                raise ValueError(f"--device {device}: only {len(self.gpus)} GPU(s) are visible ({self.gpus})")
            self.gpus = [self.gpus[index]]
        self.cores = cores or usable_cores()
        if workers is None:
            per_device = runs_per_device or (1 if self.gpus else self.cores)
            workers = per_device * max(1, len(self.gpus))
        self.workers = workers
        self.threads = max(1, self.cores // workers)
        cap = user_thread_cap()
        if cap is not None and cap < self.threads:
            self.threads = cap
        self.wait_policy = "PASSIVE"  # chosen again from the machine's load when a sweep starts

    def _env(self, slot: int) -> dict[str, str]:
        env = thread_env(self.threads, self.wait_policy)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def execute(self, jobs: list[Job], records: Path, *, force: bool = False,
                plugins: Iterable[str] = ()) -> Iterator[tuple[Job, dict]]:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        pending = list(jobs)
        slots: list[dict] = []  # {"process", "conn", "job"} per live worker
        log_level = logging.getLogger().getEffectiveLevel()

        def start(slot_id: int) -> dict:
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_worker_main,
                                  args=(child, self._env(slot_id), list(plugins), log_level, os.getpid()),
                                  # Not daemonic: a run starts processes of its own (the feature
                                  # cache's audio loaders), which daemonic processes may not. The
                                  # finally below ends the workers, and they die with the sweep.
                                  name=f"avbench-worker-{slot_id}", daemon=False)
            process.start()
            child.close()
            return {"id": slot_id, "process": process, "conn": parent, "job": None}

        workers = min(self.workers, len(pending))
        if workers:  # before the workers start, so a load reading is the others' load
            choice = choose_wait_policy(workers, self.threads, self.cores, busy_cores)
            self.wait_policy = choice.policy
            log.info("%s", choice.message())
        try:
            slots = [start(i) for i in range(workers)]
            log.info("local executor: %d worker(s), %d thread(s) each%s", len(slots), self.threads,
                     f", GPUs {','.join(self.gpus)}" if self.gpus else "")
            while True:
                for i, slot in enumerate(slots):
                    if slot["job"] is None and pending:
                        if not slot["process"].is_alive():  # died while idle: nothing lost, replace it
                            slots[i] = slot = start(slot["id"])
                        slot["job"] = pending.pop(0)
                        log.info("%s (worker %d)", slot["job"]["label"], slot["id"])
                        slot["conn"].send({**slot["job"], "records": str(records), "force": force,
                                           "device": self.device})
                busy = [s for s in slots if s["job"] is not None]
                if not busy:
                    return
                ready = wait([s["conn"] for s in busy] + [s["process"].sentinel for s in busy])
                for slot in busy:
                    if slot["conn"] not in ready and slot["process"].sentinel not in ready:
                        continue
                    job, slot["job"] = slot["job"], None
                    try:
                        outcome = slot["conn"].recv()
                    except (EOFError, OSError):  # died mid-run: record it, replace the worker
                        slot["process"].join()
                        error = _death(slot["process"].exitcode)
                        record_job_failure(records, job, error)
                        outcome = {"status": "failed", "error": error}
                        slots[slots.index(slot)] = start(slot["id"])
                    yield job, outcome
        finally:
            for slot in slots:
                slot["conn"].close()  # an idle worker reads EOF and exits
                if slot["job"] is not None:  # interrupted mid-run: its epoch state lets a re-run resume
                    slot["process"].terminate()
            for slot in slots:
                slot["process"].join()


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the ray executor needs Ray, an optional extra: pip install 'avbench[ray]'") from exc
    return ray


_RAY_PLUGINS: set[str] = set()  # per Ray worker process: plugins already imported


def _ray_run(job: Job, records: str, force: bool, plugins: list[str], cwd: str, threads: int,
             device: str = "auto") -> dict:
    """Body of one Ray task (Ray reuses worker processes, so everything here is idempotent)."""
    import torch

    if os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    import_plugins([p for p in plugins if p not in _RAY_PLUGINS])
    _RAY_PLUGINS.update(plugins)
    return execute_job(job, records, force=force, device=device)


class RayExecutor:
    """Each run a Ray task with `cpus_per_run` CPUs and `gpus_per_run` GPUs."""

    def __init__(self, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0,
                 num_cpus: int | None = None, device: str = "auto") -> None:
        if cpus_per_run <= 0 or gpus_per_run < 0:
            raise ValueError("--cpus-per-run must be positive and --gpus-per-run not negative")
        _import_ray()  # fail before any planning if the extra is missing
        # Ray gives a task the GPUs it asked for through CUDA_VISIBLE_DEVICES: cuda means those.
        self.address, self.num_cpus, self.device = address, num_cpus, "cuda" if device.startswith("cuda") else device
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run

    def execute(self, jobs: list[Job], records: Path, *, force: bool = False,
                plugins: Iterable[str] = ()) -> Iterator[tuple[Job, dict]]:
        if not jobs:
            return
        ray = _import_ray()
        from bench.paths import data_dir

        threads = max(1, int(self.cpus_per_run))
        env = {"AVBENCH_DATA": str(data_dir().resolve()), **thread_env(threads)}
        # "local": start a fresh instance here, never join a cluster found on the machine by chance.
        local = {} if self.address else {"num_cpus": self.num_cpus, "include_dashboard": False}
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address or "local", **local)
        # The environment goes with each task, so it holds also where the caller started Ray.
        task = ray.remote(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0,
                          runtime_env={"env_vars": env})(_ray_run)
        records = Path(records).resolve()
        try:
            refs = {}
            for job in jobs:
                log.info("%s (submitted to Ray)", job["label"])
                refs[task.remote(job, str(records), force, list(plugins), os.getcwd(), threads,
                                 self.device)] = job
            while refs:
                (ref,), _ = ray.wait(list(refs), num_returns=1)
                job = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task's worker died (OOM, node lost): record it
                    error = f"Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    record_job_failure(records, job, error, str(exc))
                    outcome = {"status": "failed", "error": error}
                yield job, outcome
        finally:
            if started_here:
                ray.shutdown()
