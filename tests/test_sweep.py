"""Sweeps: the grid a config expands to, the dry-run plan and cost, and the local executor (shared
feature cache built once, a dead worker recorded, a SIGKILLed sweep resumed to the same records)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.errors import ConfigError
from bench.evaluate.run import run_experiment
from bench.paths import data_dir
from bench.records import read_records, sidecar_path
from bench.registry import _REGISTRY
from bench.sweep.config import PAPER_ENCODERS, PAPER_LABEL_FRACTIONS, load_sweep
from bench.sweep.cost import cost_table, default_seconds_per_clip_epoch
from bench.sweep.cpu import usable_cores
from bench.sweep.executors import LocalExecutor, record_failure
from bench.sweep.run import plan_runs, run_sweep, write_sidecar

ROOT = Path(__file__).resolve().parent.parent
TRAIN = "{epochs: 2, lr: 1.0e-3, batch_size: 8, hidden: 16, layers: 1}"

# Fields that legitimately differ between two executions of the same run:
TIMING_AND_HOST = (
    "wall_seconds",        # timing
    "git_commit",          # other work may dirty the checkout between the two sweeps
    "resumed_from_epoch",  # the interrupted run resumed, by design; the reference did not
    "threads",             # a property of the worker (cores // workers, Ray's num_cpus), not of the run
    "omp_wait_policy",     # likewise the worker's: chosen per sweep from the machine's load
    "counters",            # cache hits and misses: which run built the shared features depends on timing
)


def comparable(record: dict) -> dict:
    """A record without what depends on when, where and in which order it ran."""
    out = {k: v for k, v in record.items() if k not in TIMING_AND_HOST}
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in record["history"]]  # timing
    return out


def by_hash(path: Path) -> dict[str, dict]:
    return {r["config_hash"]: comparable(r) for r in read_records(path) if r["status"] == "ok"}


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_grid_shorthands_defaults_and_k_shots(tmp_path):
    config = write_config(tmp_path / "paper.yaml", f"""
tasks: [embedded:small]
encoders: paper
label_fractions: paper
k_shots: [1, 5]
seeds: 3
budget: "steps:60"
train: {TRAIN}
""")
    sweep = load_sweep(config)
    points = len(PAPER_LABEL_FRACTIONS) + 2
    assert len(sweep.runs) == len(PAPER_ENCODERS) * points * 3
    assert {r.seed for r in sweep.runs} == {0, 1, 2} and {r.budget_steps for r in sweep.runs} == {60}
    assert sweep.budget == {"unit": "steps", "value": 60} and sweep.pretraining == {}
    # With no modes named, each encoder gets its own default: resnet18-scratch trains from scratch.
    assert {r.mode for r in sweep.runs if r.encoder == "resnet18-scratch"} == {"scratch"}
    assert {r.mode for r in sweep.runs if r.encoder != "resnet18-scratch"} == {"frozen"}
    shots = [r for r in sweep.runs if r.k_shot is not None]
    assert {r.k_shot for r in shots} == {1, 5} and {r.label_fraction for r in shots} == {1.0}
    # Named modes apply to every encoder, and k-shot points alone replace the default 100%.
    config.write_text(f"tasks: [x]\nencoders: [mfcc39, resnet18-scratch]\nmodes: [frozen]\nk_shots: [2]\n"
                      f"task_types: [words, speaker-id]\ntrain: {TRAIN}\n")
    sweep = load_sweep(config)
    assert [(r.encoder, r.mode, r.task_type, r.k_shot) for r in sweep.runs] == [
        ("mfcc39", "frozen", "words", 2), ("resnet18-scratch", "frozen", "words", 2),
        ("mfcc39", "frozen", "speaker-id", 2), ("resnet18-scratch", "frozen", "speaker-id", 2)]
    config.write_text("train_task: a\neval_tasks: [b, c]\nencoders: [mfcc39]\n")
    (run,) = load_sweep(config).runs
    assert run.task == "a" and tuple(run.eval_tasks) == ("b", "c")
    # A generalisation matrix: every task trained, each tested on all of eval_tasks.
    config.write_text("tasks: [a, b]\neval_tasks: [a, b]\nencoders: [mfcc39]\n")
    assert [(r.task, tuple(r.eval_tasks)) for r in load_sweep(config).runs] == [("a", ("a", "b")), ("b", ("a", "b"))]


@pytest.mark.parametrize("body, message", [
    ("tasks: [x]\nencoders: [mfcc39]\nseed: [0]\n", r"bad.yaml: unknown key\(s\) \['seed'\]"),
    ("tasks: [x]\n", r"bad.yaml: 'encoders' must list at least one entry \(or be `paper`\)"),
    ("tasks: [x]\nencoders: [mfcc39]\ntrain: {seed: 3}\n", r"train.seed is set by the sweep key 'seeds'"),
    ("tasks: [x]\nencoders: [mfcc39]\nbudget: steps\n", r"budget must be 'epochs' or 'steps:N'"),
    ("tasks: [x]\nencoders: [mfcc39]\nk_shots: [0]\n", r"'k_shots' must list positive integers"),
    ("tasks: [x]\nencoders: [mfcc39]\nlabel_fractions: most\n", r"'label_fractions' must be a non-empty list or"),
    ("tasks: [x]\nencoders: [mfcc39]\npretraining: {apc-x: {encoder: apc, data: x, steps: 1}}\n",
     r"\['apc-x'\] not used by any encoder"),
    ("tasks: [x]\nencoders: [mfcc39]\ntask_types: [word]\n", r"task_types \['word'\] unknown"),
    ("train_task: x\nencoders: [mfcc39]\n", r"gives 'train_task' \(or 'tasks'\) with 'eval_tasks'"),
    ("tasks: [x]\nencoders: [mfcc39]\nbudget: 'steps:3'\ntrain: {epochs: 5}\n", r"budget_steps \(3\) must be at least"),
])
def test_bad_sweep_configs_name_the_file_and_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write_config(tmp_path / "bad.yaml", body))


def test_dry_run_counts_and_costs_without_building_anything(tiny_corpus, tmp_path, capsys):
    records = tmp_path / "runs.jsonl"
    config = write_config(tmp_path / "sweep.yaml", f"""
name: costed
tasks: ["{tiny_corpus.path}"]
encoders: [mfcc39, logmel, logmel-l1, resnet18-scratch]
seeds: [0, 1, 2]
train: {TRAIN}
records: {records}
""")
    sweep = load_sweep(config)
    # Seeds outermost, the grid's order within a seed.
    assert [(r.seed, r.encoder) for r in sweep.runs[:5]] == \
        [(0, "mfcc39"), (0, "logmel"), (0, "logmel-l1"), (0, "resnet18-scratch"), (1, "mfcc39")]
    done = run_experiment(sweep.runs[0], records, progress=False)          # mfcc39 seed 0
    record_failure(records, asdict(sweep.runs[4]), "RuntimeError: boom")  # mfcc39 seed 1
    cache_entries = sorted((data_dir() / "cache").rglob("meta.json"))
    rows, problems = cost_table(sweep)
    assert problems == {} and sorted((data_dir() / "cache").rglob("meta.json")) == cache_entries
    assert len(read_records(records)) == 2, "a dry run writes no record"
    assert {k: rows["mfcc39"][k] for k in ("runs", "recorded", "failed", "remaining")} == \
        {"runs": 3, "recorded": 1, "failed": 1, "remaining": 2}
    # The remaining 100 Hz frozen runs (mfcc39 and logmel alike) are costed from the recorded run.
    per_clip = sorted(h["seconds"] / done["train_clips"] for h in done["history"])
    measured = sum(per_clip) / 2  # the median of two epochs
    assert rows["mfcc39"]["seconds"] == pytest.approx(2 * 2 * done["train_clips"] * measured)
    assert rows["logmel"]["seconds"] == pytest.approx(3 * 2 * done["train_clips"] * measured)
    assert rows["logmel"]["sources"] == {"measured 100 Hz frozen"}
    # No 25 Hz record: the documented default, and for a trained encoder only a lower bound.
    assert rows["logmel-l1"]["seconds"] == pytest.approx(3 * 2 * 36 * 15 / 2880)
    assert rows["resnet18-scratch"]["sources"] == {"default 25 Hz, scratch: a lower bound"}
    assert default_seconds_per_clip_epoch(100) == pytest.approx(45 / 2880)

    assert main(["-q", "sweep", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 run(s) in the grid (2 epochs each)" in out
    assert "recorded 1, failed before 1 (retried), remaining 11" in out
    assert not sidecar_path(records).exists(), "a dry run writes no sidecar either"


def _plugin(tmp_path: Path, name: str, body: str) -> Path:
    """A plugin module registering encoder `name`, a fixed random projection of 10 ms frames."""
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(f"""
import os, signal, time
import torch
from bench.registry import Encoder, register_encoder

@register_encoder("{name}")
class Frames(Encoder):
    frame_rate, dim, trainable = 100.0, 8, False

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(160, 8)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.proj.bias)
{body}

    def frames(self, wav, lengths):
        n = int(self.output_lengths(lengths).max())
        wav = torch.nn.functional.pad(wav, (0, n * 160 - wav.shape[1]))
        return self.proj(wav.reshape(len(wav), n, 160)), self.output_lengths(lengths)
""")
    return path


def test_concurrent_workers_build_the_shared_features_once(tiny_corpus, tmp_path):
    events = tmp_path / "events.log"
    plugin = _plugin(tmp_path, "slow-frames-test", f"""
        self.log("init")

    def log(self, what):
        with open({str(events)!r}, "a") as fh:
            fh.write(f"{{what}} {{os.getpid()}} {{time.time()}}\\n")

    def forward(self, wav, lengths):
        # Hold the build until the other run has built its encoder (its next step is to ask the
        # cache), however late its worker started: the contention is certain, not a timing bet.
        deadline = time.time() + 60
        while open({str(events)!r}).read().count("init") < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        self.log("forward")
        return self.frames(wav, lengths)""")
    records = tmp_path / "runs.jsonl"
    config = write_config(tmp_path / "sweep.yaml", f"""
name: shared-cache
tasks: ["{tiny_corpus.path}"]
encoders: [slow-frames-test]
seeds: [0, 1]
train: {TRAIN}
records: {records}
""")
    try:
        assert main(["-q", "--plugin", str(plugin), "sweep", str(config), "--workers", "2"]) == 0
    finally:
        _REGISTRY.pop("slow-frames-test", None)
    lines = [line.split() for line in events.read_text().splitlines()]
    inits = {pid: float(t) for what, pid, t in lines if what == "init"}
    forwards = [(pid, float(t)) for what, pid, t in lines if what == "forward"]
    builders = {pid for pid, _ in forwards}
    # The parent registers the plugin too but never builds an encoder: both inits are workers'.
    assert len(inits) == 2 and len(builders) == 1 and builders <= set(inits)
    waiter = (set(inits) - builders).pop()
    assert inits[waiter] < forwards[-1][1], "the second run must ask while the first is still building"
    runs = read_records(records)
    assert [r["status"] for r in runs] == ["ok", "ok"]
    assert sum(r["counters"]["cache_misses"] for r in runs) == 1
    assert sum(r["counters"]["cache_hits"] for r in runs) == 1
    assert sum(r["counters"]["encoder_forward_clips"] for r in runs) == len(tiny_corpus.manifest.table)
    # The sidecar names the sweep's runs by the hashes the runner gave them.
    entry = json.loads(sidecar_path(records).read_text())["shared-cache"]
    assert entry["config_hashes"] == sorted(r["config_hash"] for r in runs)
    assert entry["pretraining"] == {} and entry["budget"] == {"unit": "epochs", "value": 2}


def _plugin_sweep(tiny_corpus, tmp_path: Path, name: str, body: str, encoders: list[str]) -> tuple[int, Path]:
    """Run a one-worker sweep of `encoders` on the tiny corpus with plugin encoder `name` loaded."""
    plugin = _plugin(tmp_path, name, body)
    records = tmp_path / "runs.jsonl"
    config = write_config(tmp_path / "sweep.yaml", f"""
tasks: ["{tiny_corpus.path}"]
encoders: [{", ".join(encoders)}]
train: {TRAIN}
records: {records}
""")
    try:
        return main(["-q", "--plugin", str(plugin), "sweep", str(config), "--workers", "1"]), records
    finally:
        _REGISTRY.pop(name, None)


def test_a_dead_worker_is_recorded_and_replaced(tiny_corpus, tmp_path, capsys):
    rc, records = _plugin_sweep(tiny_corpus, tmp_path, "sudden-death-test", """
    def forward(self, wav, lengths):
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would""", ["sudden-death-test", "mfcc39"])
    assert rc == 1
    assert "FAILED [1/2] sudden-death-test" in capsys.readouterr().err
    failed, ok = sorted(read_records(records), key=lambda r: r["status"])
    assert failed["status"] == "failed" and failed["encoder"] == "sudden-death-test"
    assert failed["error"] == "worker process killed by SIGKILL (out of memory?)"
    assert ok["status"] == "ok" and ok["encoder"] == "mfcc39", "the replacement worker ran the next run"


def test_a_run_in_a_worker_may_start_processes_of_its_own(tiny_corpus, tmp_path):
    # The feature cache loads audio with DataLoader worker processes for corpora of 512 clips or
    # more; a daemonic sweep worker could not start them ("daemonic processes are not allowed to
    # have children"), as happened to a 3,600-clip reference sweep.
    rc, records = _plugin_sweep(tiny_corpus, tmp_path, "spawning-frames-test", """
    def forward(self, wav, lengths):
        import multiprocessing
        child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0.01,))
        child.start()
        child.join()
        return self.frames(wav, lengths)""", ["spawning-frames-test"])
    assert rc == 0
    assert [r["status"] for r in read_records(records)] == ["ok"]


def test_local_executor_concurrency_and_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert (LocalExecutor(cores=8, gpus=[]).workers, LocalExecutor(cores=8, gpus=[]).threads) == (8, 1)
    cpu = LocalExecutor(runs_per_device=2, cores=8, gpus=[])
    assert (cpu.workers, cpu.threads) == (2, 4)
    gpu = LocalExecutor(runs_per_device=3, cores=12, gpus=["0", "1"])
    assert (gpu.workers, gpu.threads) == (6, 2)
    assert [gpu._env(i)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0", "1", "0", "1"]
    assert LocalExecutor(workers=3, runs_per_device=5, cores=2, gpus=[]).threads == 1

    # A user's OMP_NUM_THREADS caps each worker's threads; it never raises them.
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert LocalExecutor(runs_per_device=1, cores=8, gpus=[]).threads == 3
    assert LocalExecutor(runs_per_device=2, cores=8, gpus=[]).threads == 3
    assert LocalExecutor(runs_per_device=4, cores=8, gpus=[]).threads == 2
    assert LocalExecutor(runs_per_device=1, cores=8, gpus=[])._env(0)["OMP_NUM_THREADS"] == "3"
    for bad in ("0", "four", "-2"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        with pytest.raises(ConfigError, match="OMP_NUM_THREADS"):
            LocalExecutor(cores=8, gpus=[])


def test_sigkilled_sweep_resumes_to_the_records_of_an_uninterrupted_one(tiny_corpus, tmp_path):
    config = write_config(tmp_path / "sweep.yaml", f"""
tasks: ["{tiny_corpus.path}"]
encoders: [mfcc39]
label_fractions: [1.0, 0.5]
seeds: [0, 1]
train: {{epochs: 4, lr: 1.0e-3, batch_size: 8, hidden: 16, layers: 1}}
""")

    def sweep(records: Path) -> dict:  # in this process, one run after another
        loaded = load_sweep(config)
        loaded.records = records
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the workers below: the same arithmetic, the same numbers
        try:
            return run_sweep(loaded, progress=False)
        finally:
            torch.set_num_threads(threads)

    # The reference first: run state is kept per config hash, and it must not resume the other's.
    reference = tmp_path / "reference.jsonl"
    assert sweep(reference)["ran"] == 4
    interrupted = tmp_path / "interrupted.jsonl"
    victim = subprocess.Popen([sys.executable, "-m", "bench", "-q", "sweep", str(config), "--records", str(interrupted),
                               "--workers", str(usable_cores())], env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    states = [data_dir() / "runs" / run.config_hash / "state.pt" for run in plan_runs(load_sweep(config))]
    deadline = time.monotonic() + 120
    # Kill once a run is recorded and another has finished an epoch: both paths are exercised.
    while not (interrupted.exists() and read_records(interrupted) and any(p.exists() for p in states)):
        assert victim.poll() is None, f"the sweep ended before it could be killed: {victim.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(victim.pid)], capture_output=True,
                                                  text=True).stdout.split()]
    assert workers, "the sweep runs its runs in worker processes"
    os.kill(victim.pid, signal.SIGKILL)  # the sweep process only, mid-run: no clean-up of any kind
    victim.wait()
    # Its workers must not live on: left alone they would finish their runs and append records
    # beside the re-run's. The kernel kills them with their parent (bench.sweep.executors._die_with_parent).
    deadline = time.monotonic() + 20
    def alive(pid: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except FileNotFoundError:
            return False

    while any(alive(pid) for pid in workers):
        if time.monotonic() > deadline:
            os.killpg(victim.pid, signal.SIGKILL)
            raise AssertionError(f"worker(s) {workers} outlived the killed sweep")
        time.sleep(0.05)
    kept = len(read_records(interrupted))
    # A run killed between appending its record and removing its state leaves a state that no
    # re-run resumes (the run is recorded): only states of unrecorded runs are in flight.
    recorded = {r["config_hash"] for r in read_records(interrupted)}
    in_flight = [p for p in states if p.exists() and p.parent.name not in recorded]
    assert 1 <= kept < 4
    summary = sweep(interrupted)
    assert (summary["ran"], summary["skipped"], summary["failed"]) == (4 - kept, kept, [])
    records = read_records(interrupted)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records), "each run recorded exactly once"
    assert by_hash(interrupted) == by_hash(reference)
    if in_flight:  # a run killed after a finished epoch continued from it (all but always the case)
        assert any(r["resumed_from_epoch"] for r in records)


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_a_run_another_process_is_running_is_passed_over_then_waited_for(tiny_corpus, tmp_path, caplog, executor):
    """Two sweeps of one grid share it: each passes over the run the other is running, and comes back
    to it once its own are done (to find it recorded, or to run it if the other died)."""
    import threading

    from bench.evaluate.identity import run_dir
    from bench.files import exclusive_lock

    config = write_config(tmp_path / "sweep.yaml", f"""
tasks: ["{tiny_corpus.path}"]
encoders: [mfcc39]
seeds: [0, 1]
train: {TRAIN}
records: {tmp_path / "runs.jsonl"}
""")
    sweep = load_sweep(config)
    first, second = (run.config_hash for run in plan_runs(sweep))
    held, seen_second_first = threading.Event(), []

    def other_process():  # holds the first run's lock, as a second sweep running it would
        with exclusive_lock(run_dir(first).with_suffix(".lock"), logging.getLogger("test"), "held"):
            held.set()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                records = read_records(sweep.records) if sweep.records.exists() else []
                if any(r["config_hash"] == second for r in records):
                    seen_second_first.append(True)
                    return
                time.sleep(0.05)

    holder = threading.Thread(target=other_process)
    holder.start()
    held.wait(10)
    with caplog.at_level(logging.INFO, logger="avbench"):
        summary = run_sweep(sweep, progress=False, executor=LocalExecutor(workers=1) if executor == "local" else None)
    holder.join()
    assert seen_second_first, "the sweep waited for the held run instead of running the other one first"
    assert [r["config_hash"] for r in read_records(sweep.records)] == [second, first]
    assert (summary["ran"], summary["failed"]) == (2, [])  # the holder never recorded it: this sweep ran it
    assert "1 run(s) were running in another process when their turn came; waiting for them now" in caplog.text


def test_the_ray_executor_without_ray_says_how_to_install_it(monkeypatch):
    from bench.sweep.executors import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where the extra is not installed
    with pytest.raises(ConfigError, match=r"pip install 'avbench\[ray\]'"):
        RayExecutor()


def test_modes_that_an_encoder_cannot_train_in_are_listed_not_failed(tmp_path):
    from bench.sweep.config import load_sweep
    from bench.sweep.cost import dry_run_report

    config = tmp_path / "paperlike.yaml"
    config.write_text("name: p\ntasks: [embedded:small]\nencoders: [mfcc39, resnet18-scratch]\n"
                      "modes: [finetune, frozen]\nseeds: [0]\n")
    sweep = load_sweep(config)
    assert sorted((c.encoder, c.mode) for c in sweep.runs) == [
        ("mfcc39", "frozen"), ("resnet18-scratch", "finetune"), ("resnet18-scratch", "frozen")]
    assert sweep.not_applicable == ["mfcc39 in mode finetune"]
    assert "not applicable, left out of the grid: mfcc39 in mode finetune" in dry_run_report(sweep)


_ORPHAN_PARENT = """
import multiprocessing, os, sys, time
from pathlib import Path
from bench.sweep.executors import _die_with_parent

def busy_worker(pid_file):  # a worker in the middle of a long run
    _die_with_parent(os.getppid())
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=busy_worker, args=(sys.argv[1],))
    child.start()
    time.sleep(120)
"""


def test_a_worker_dies_with_its_sweep_process(tmp_path):
    # A worker in the middle of a long run must not outlive a sweep killed with SIGKILL.
    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(_ORPHAN_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while Path(f"/proc/{worker}").exists() and "zombie" not in _status(worker):
            assert time.monotonic() < deadline, "the worker outlived its killed parent"
            time.sleep(0.05)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return "zombie"


def test_the_sidecar_keeps_the_runs_of_earlier_stages_of_a_sweep(tmp_path):
    from types import SimpleNamespace

    config = write_config(tmp_path / "grown.yaml", "encoders: [mfcc39]\n")
    stage = dict(name="grown", source=config, records=tmp_path / "runs.jsonl", description="", deviations=[],
                 pretraining={}, budget={"unit": "epochs", "value": 1})
    write_sidecar(SimpleNamespace(**stage), [SimpleNamespace(config_hash="aaa"), SimpleNamespace(config_hash=None)])
    write_sidecar(SimpleNamespace(**{**stage, "description": "more seeds"}),
                  [SimpleNamespace(config_hash="bbb")])
    entry = json.loads(sidecar_path(tmp_path / "runs.jsonl").read_text())["grown"]
    assert entry["config_hashes"] == ["aaa", "bbb"] and entry["description"] == "more seeds"
    assert entry["config"] == "grown.yaml"


def test_encoders_option_runs_a_part_of_the_grid_with_only_the_pretraining_it_needs():
    from bench.sweep.config import select_encoders

    sweep = load_sweep(ROOT / "configs" / "cross-corpus.yaml")
    assert len(sweep.runs) == 10 * 2 and len(sweep.pretraining) == 7  # every reference encoder, both directions
    part = select_encoders(load_sweep(ROOT / "configs" / "cross-corpus.yaml"), ["mfcc39", "av-joint"])
    assert sorted({r.encoder for r in part.runs}) == ["av-joint@pretrained:av-joint-b8", "mfcc39"]
    assert [(r.task, tuple(r.eval_tasks)) for r in part.runs if r.encoder == "mfcc39"] == [
        ("embedded:default[rendition=0]", ("embedded:default[rendition=0]", "embedded-flite:default[rendition=0]")),
        ("embedded-flite:default[rendition=0]", ("embedded:default[rendition=0]", "embedded-flite:default[rendition=0]"))]
    assert list(part.pretraining) == ["av-joint-b8"]
    with pytest.raises(ConfigError, match=r"--encoders names hubert, which this sweep does not run; its encoders are apc, "):
        select_encoders(load_sweep(ROOT / "configs" / "cross-corpus.yaml"), ["hubert"])


def test_encoders_option_picks_one_pretraining_entry_among_an_encoders_checkpoints():
    from bench.sweep.config import select_encoders

    part = select_encoders(load_sweep(ROOT / "configs" / "question.yaml"), ["resnet18-supervised-words-q", "mfcc39"])
    assert sorted({r.encoder for r in part.runs}) == ["mfcc39", "resnet18@pretrained:resnet18-supervised-words-q"]
    assert list(part.pretraining) == ["resnet18-supervised-words-q"]
    whole = select_encoders(load_sweep(ROOT / "configs" / "question.yaml"), ["resnet18"])
    assert len(whole.pretraining) == 5  # the base name still takes every ResNet18 checkpoint
    with pytest.raises(ConfigError, match=r"and its pretraining entries apc-q, av-audio-q, "):
        select_encoders(load_sweep(ROOT / "configs" / "question.yaml"), ["resnet18-byol-q"])


def test_speaker_id_is_not_tested_across_corpora(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text("tasks: [a, b]\neval_tasks: [a, b]\ntask_types: [words, speaker-id]\nencoders: [mfcc39]\n")
    sweep = load_sweep(config)
    assert {(r.task_type, tuple(r.eval_tasks)) for r in sweep.runs} == {("words", ("a", "b")), ("speaker-id", ())}
    assert sweep.not_applicable == ["speaker-id across corpora (a closed set of speakers does not carry over)"]


def test_an_interrupted_sweep_says_what_survives_instead_of_a_traceback(monkeypatch, capsys):
    import bench.sweep.run
    from bench.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.sweep.run, "run_sweep", interrupted)
    assert main(["sweep", str(ROOT / "configs" / "question.yaml"), "--encoders", "mfcc39", "--workers", "1"]) == 130
    err = capsys.readouterr().err
    assert "avbench: interrupted. Finished runs and checkpoints are recorded" in err and "Traceback" not in err
