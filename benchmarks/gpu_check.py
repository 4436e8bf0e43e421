"""GPU acceptance check: prints figures, and PASS/FAIL for CPU-versus-device parity.

Meant to finish within 8 minutes on one GPU. Sections, each timed against a budget:
  a. environment: torch, CUDA and cuDNN versions, the device's name, the GPUs visible; the corpus
     that sections c, d and f read (embedded `small`, 600 clips);
  b. matrix-multiply rate: square fp32 and bf16 GEMMs on the device (and TF32 on CUDA), measured
     here, the rates that section d's GFLOP/s are fractions of;
  c. parity, in fp32 with TF32 off: the same 20 av-joint pretraining steps on the CPU and on the
     device (max relative difference of the two loss curves), and one mfcc39 frozen run on each
     (test accuracies, max abs difference of the per-epoch train losses); PASS or FAIL against the
     printed tolerances. With --device cpu both runs are CPU runs: a determinism check;
  d. throughput, in --precision: every pretext (bench.pretrain.objective.list_pretexts, and the
     objectives apart from encoders on resnet18, OBJECTIVE_PAIRS) for a few
     optimizer steps after warm-up on batches made beforehand (the loop's step alone; how fast the
     in-process loader makes them is printed beside it), and the forward pass of every encoder that
     builds without a checkpoint on 1 s clips, in clips/s; achieved GFLOP/s (FLOPs counted by
     torch.utils.flop_counter on one batch, cuDNN off so RNNs are counted too) as a fraction of (b);
  e. one 50-epoch mfcc39 frozen run on the default embedded corpus (10,800 clips): corpus, feature
     cache and run seconds apart (--skip-default-corpus: the small corpus instead);
  f. a 2-process DDP pretraining step (torchrun) when 2 GPUs are visible; with --device cpu, on the
     CPU (gloo), so the code path runs in CI.

--tiny shrinks models, corpus (48 clips) and step counts so that `--device cpu --tiny` runs in CI
(tests/test_gpu_check.py) and the script cannot rot; its figures measure nothing of interest.
$AVBENCH_DATA is used when set (so the default corpus is reused), else a temporary folder.
Exit status 1 when a section raised or a parity check failed.

Usage: python benchmarks/gpu_check.py [--device auto|cpu|cuda|cuda:N] [--tiny] [--precision fp32|bf16]
                                      [--out DIR] [--json PATH] [--skip-default-corpus]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.data.feature_cache import FeatureCache
from bench.data.manifest import Manifest, read_manifest
from bench.device import autocast, device_name, resolve_device
from bench.evaluate.identity import RunConfig
from bench.evaluate.run import run_experiment
from bench.pretrain.batches import StepBatches
from bench.pretrain.distributed import Distributed
from bench.pretrain.loop import PretrainConfig, pretrain, start_session, train_step
from bench.pretrain.objective import list_pretexts
from bench.registry import create_encoder, encoder_entry, list_encoders
from bench.runtime import flush_denormals

TOTAL_BUDGET_S = 480
BUDGETS_S = {"environment": 30, "matmul": 20, "parity": 90, "throughput": 120, "mfcc39_run": 180, "ddp": 40}
TINY_BUDGETS_S = {"environment": 20, "matmul": 5, "parity": 30, "throughput": 40, "mfcc39_run": 15, "ddp": 45}
# fp32 on GPU and CPU differ in summation order (cuDNN algorithms, thread splits); 20 Adam steps
# let that drift grow, so parity is a loose bound: the project's bf16-vs-fp32 tolerance.
PRETRAIN_REL_TOL = 0.02
DOWNSTREAM_LOSS_TOL = 0.01  # nats, per-epoch mean train loss
ACCURACY_TOL = 0.05         # a few test clips of the small corpus's 60
DETERMINISM_TOL = 1e-6      # CPU against CPU: the same program on the same data

TINY_CORPUS = {"speakers": 8, "words": 3, "renditions": 2}  # tests/conftest.py's: 48 clips
SMALL_RESNET = {"stage_channels": [8, 8, 16, 16]}
SMALL_VISUAL = {"channels": [8, 16, 16], "id_dim": 16, "audio_dim": 16, "noise_dim": 4, "size": 32,
                "snapshot_clips": 2, "mean_frame_clips": 4}
SMALL_WAV2VEC = {"conv_feature_layers": "[(32, 10, 5), (32, 8, 4)] + [(32, 4, 2)] * 3 + [(32, 1, 1)]",
                 "conv_aggregator_layers": "[(48, 2, 1), (48, 3, 1), (48, 4, 1)]"}
# --tiny: (encoder kwargs, pretext kwargs) per name, the sizes the unit tests use.
TINY_KWARGS: dict[str, tuple[dict, dict]] = {
    "apc": ({"num_layers": 1, "hidden_size": 16}, {}),
    "av-audio": (SMALL_RESNET, {"hidden": 16}),
    "av-visual": (SMALL_RESNET, SMALL_VISUAL),
    "av-joint": (SMALL_RESNET, {"visual": SMALL_VISUAL, "audio": {"hidden": 16}}),
    "logmel-l1": ({"channels": [16, 32]}, SMALL_VISUAL),
    "pase+": ({"fmaps": [8, 8, 16, 16, 16, 16, 32, 32], "emb_dim": 16, "rnn_dim": 32},
              {"hidden_size": 32, "lps_n_fft": 512, "decoder_fmaps": (16, 16, 8), "decoder_hidden": 8}),
    "wav2vec": (SMALL_WAV2VEC, {}),
    "wav2vec_large": (SMALL_WAV2VEC, {}),
    "resnet18-scratch": (SMALL_RESNET, {}),
    "resnet18": (SMALL_RESNET, {}),
    "resnet18/simclr": (SMALL_RESNET, {"hidden_dim": 32, "output_dim": 16}),
    "resnet18/moco": (SMALL_RESNET, {"hidden_dim": 32, "output_dim": 16, "queue_size": 16}),
    "resnet18/dino": (SMALL_RESNET, {"hidden_dim": 32, "bottleneck_dim": 16, "output_dim": 64}),
    "resnet18/supervised": (SMALL_RESNET, {"label_column": "speaker"}),
}
# Objectives apart from encoders, measured on the encoder the reference sweep trains them on.
OBJECTIVE_PAIRS = ("resnet18/simclr", "resnet18/moco", "resnet18/dino", "resnet18/supervised")


@dataclass(frozen=True)
class Settings:
    device: torch.device
    tiny: bool
    precision: str
    out: Path
    corpus: Path | None = None  # manifest of sections c, d and f

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def kwargs_for(name: str, tiny: bool) -> tuple[dict, dict]:
    encoder, pretext = TINY_KWARGS.get(name, ({}, {})) if tiny else ({}, {})
    # The attribute-target cache draws a progress bar unless told not to (pretrain's progress=False
    # does not reach it); it would bury the figures.
    if name == "av-audio":
        pretext = {**pretext, "progress": False}
    elif name == "av-joint":
        pretext = {**pretext, "audio": {**pretext.get("audio", {}), "progress": False}}
    return encoder, pretext


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 matmuls and convolutions on or off (CUDA), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def timed(step, device: torch.device, warmup: int, repeat: int) -> float:
    """Seconds per call of step() after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    sync(device)
    return (time.perf_counter() - start) / repeat


class Report:
    """The figures of every section, each timed and checked against its budget."""

    def __init__(self, tiny: bool) -> None:
        self.budgets = TINY_BUDGETS_S if tiny else BUDGETS_S
        self.sections: dict[str, dict] = {}
        self.started = time.perf_counter()
        self.ok = True

    @contextlib.contextmanager
    def section(self, key: str, title: str):
        budget = self.budgets[key]
        print(f"\n== {title} (budget {budget} s) ==", flush=True)
        figures: dict = {"status": "ok"}
        start = time.perf_counter()
        try:
            yield figures
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others' figures
            traceback.print_exc()
            figures.update(status="error", error=f"{type(exc).__name__}: {exc}")
            self.ok = False
        seconds = time.perf_counter() - start
        figures.update(seconds=round(seconds, 2), budget_seconds=budget)
        self.sections[key] = figures
        print(f"-- {key}: {figures['status']}, {seconds:.1f} s; {self.elapsed():.1f} s of {TOTAL_BUDGET_S} s so far",
              flush=True)
        if seconds > budget:
            print(f"WARNING: {key} took {seconds:.0f} s, over its {budget} s budget")

    def check(self, figures: dict, name: str, value: float, tolerance: float) -> None:
        passed = bool(value <= tolerance)
        figures.setdefault("checks", []).append({"name": name, "value": value, "tolerance": tolerance,
                                                 "pass": passed})
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {value:.3g} (tolerance {tolerance:g})")
        if not passed:
            figures["status"] = "fail"
            self.ok = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def build_apart(size: str, overrides: dict) -> Manifest:
    """The embedded corpus of that size (built, or found under $AVBENCH_DATA), built by a `python -c`.

    build_corpus runs every speaker in a fresh forkserver child, and each child re-imports the
    parent's __main__ module: this script, so torch and all of avbench, seconds per speaker. A
    `python -c` parent has no main module to re-import.
    """
    code = ("import json, sys\nfrom bench.data.corpus.build import build_corpus\n"
            "from bench.data.corpus.embedded import CorpusConfig\n"
            "print(build_corpus(CorpusConfig.from_size(sys.argv[1], **json.loads(sys.argv[2])), progress=False).path)")
    done = subprocess.run([sys.executable, "-c", code, size, json.dumps(overrides)], check=False,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"building the {size} corpus failed:\n{done.stderr[-3000:]}")
    return read_manifest(Path(done.stdout.strip().splitlines()[-1]))


def environment(s: Settings, figures: dict) -> Settings:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    figures.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   device=str(s.device), device_name=device_name(s.device), gpus_visible=gpus,
                   cpu_threads=torch.get_num_threads(), precision=s.precision, tiny=s.tiny,
                   avbench_data=os.environ["AVBENCH_DATA"])
    for key in ("torch", "cuda", "cudnn", "device", "device_name", "gpus_visible", "cpu_threads", "avbench_data"):
        print(f"{key}: {figures[key]}")
    start = time.perf_counter()
    manifest = build_apart("small", TINY_CORPUS if s.tiny else {})
    figures.update(corpus=str(manifest.path), corpus_clips=len(manifest.table),
                   corpus_seconds=round(time.perf_counter() - start, 2))
    print(f"corpus for c, d, f: {figures['corpus_clips']} clips, ready in {figures['corpus_seconds']} s")
    return Settings(s.device, s.tiny, s.precision, s.out, manifest.path)


def gemm_rate(device: torch.device, dtype: torch.dtype, n: int, min_seconds: float) -> float:
    """GFLOP/s of an n x n x n matrix product, repeated for at least min_seconds after a warm-up."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if reps >= 3:
            sync(device)
            if (seconds := time.perf_counter() - start) >= min_seconds:
                return 2 * n ** 3 * reps / seconds / 1e9


def matmul_section(s: Settings, figures: dict) -> None:
    n = 1024 if s.tiny or not s.cuda else 8192
    rates = {}
    with tf32(False):  # "fp32" is true fp32: the rate of the parity runs
        rates["fp32"] = gemm_rate(s.device, torch.float32, n, 0.2 if s.tiny else 0.5)
    if s.cuda:  # cuDNN convolutions run TF32 by default in fp32 training
        with tf32(True):
            rates["tf32"] = gemm_rate(s.device, torch.float32, n, 0.5)
    # CPUs without bf16 units run it at well under 1 GFLOP/s: 1024^3 would take seconds a product.
    bf16_n = n if s.cuda else 256
    rates["bf16"] = gemm_rate(s.device, torch.bfloat16, bf16_n, 0.2 if s.tiny else 0.5)
    figures.update(n=n, bf16_n=bf16_n, gflops=rates)
    for kind, rate in rates.items():
        size = bf16_n if kind == "bf16" else n
        print(f"{kind} matrix product ({size}^3): {rate:.1f} GFLOP/s")


def loss_curve(folder: Path) -> np.ndarray:
    with open(folder / "loss.csv") as handle:
        return np.array([float(row["loss"]) for row in csv.DictReader(handle)])


def parity_section(s: Settings, figures: dict, report: Report) -> None:
    other = str(s.device) if s.cuda else "CPU"
    print(f"CPU against {other}" + ("" if s.cuda else " (the device is the CPU: a determinism check)")
          + ", fp32, TF32 off")
    with tf32(False):
        pretrain_parity(s, figures, report, other)
        downstream_parity(s, figures, report, other)


def pretrain_parity(s: Settings, figures: dict, report: Report, other: str) -> None:
    enc_kw, pre_kw = kwargs_for("av-joint", s.tiny)
    config = PretrainConfig(encoder="av-joint", data=str(s.corpus), steps=20, batch_size=4 if s.tiny else 8,
                            log_every=1, save_every=20, encoder_kwargs=enc_kw, pretext_kwargs=pre_kw)
    # JointPretext builds its attribute-target cache before drawing the visual generator's
    # weights, and a cache build draws from torch's global RNG (a DataLoader's base seed): a run
    # that builds the cache starts from other weights than one that finds it. Build it first.
    start_session(config, s.out / "parity-warm", Distributed(), torch.device("cpu"), progress=False)
    curves = {}
    for tag, where in (("cpu", "cpu"), ("device", str(s.device))):
        pretrain(config, s.out / f"parity-pretrain-{tag}", progress=False, device=where, force=True)
        curves[tag] = loss_curve(s.out / f"parity-pretrain-{tag}")
    relative = np.abs(curves["device"] - curves["cpu"]) / np.abs(curves["cpu"])
    figures["pretrain"] = {k: v.tolist() for k, v in curves.items()}
    print(f"av-joint, 20 steps: final loss CPU {curves['cpu'][-1]:.5f}, {other} {curves['device'][-1]:.5f}")
    report.check(figures, "pretraining loss, max relative difference", float(relative.max()),
                 PRETRAIN_REL_TOL if s.cuda else DETERMINISM_TOL)


def downstream_parity(s: Settings, figures: dict, report: Report, other: str) -> None:
    # lr 1e-3 (not the protocol's 1e-4): in 3 epochs the head leaves chance, so its test
    # predictions are decided by clear margins rather than by rounding.
    config = RunConfig(encoder="mfcc39", task=str(s.corpus), epochs=2 if s.tiny else 3, lr=1e-3, lr_drop_epoch=None,
                       **({"batch_size": 8, "hidden": 8, "layers": 1} if s.tiny else {}))
    records = {}
    for tag, where in (("cpu", "cpu"), ("device", str(s.device))):
        cache = FeatureCache(s.out / f"parity-cache-{tag}")  # each side computes its own features
        records[tag] = run_experiment(config, s.out / f"parity-{tag}.jsonl", progress=False, cache=cache,
                                      device=where, force=True)
    losses = {tag: np.array([h["train_loss"] for h in r["history"]]) for tag, r in records.items()}
    accuracy = {tag: r["test_acc"] for tag, r in records.items()}
    figures["downstream"] = {tag: {"test_acc": accuracy[tag], "train_loss": losses[tag].tolist()} for tag in records}
    print(f"mfcc39 frozen, {config.epochs} epochs: test accuracy CPU {accuracy['cpu']:.4f}, "
          f"{other} {accuracy['device']:.4f}")
    loss_tol, accuracy_tol = (DOWNSTREAM_LOSS_TOL, ACCURACY_TOL) if s.cuda else (DETERMINISM_TOL, DETERMINISM_TOL)
    report.check(figures, "downstream train loss, max abs difference",
                 float(np.abs(losses["device"] - losses["cpu"]).max()), loss_tol)
    report.check(figures, "downstream test accuracy, abs difference", abs(accuracy["device"] - accuracy["cpu"]),
                 accuracy_tol)


def count_flops(run) -> float:
    """FLOPs of run("fp32") (matmuls, convolutions, attention), with cuDNN off so its fused RNNs,
    which the counter cannot see, run as the matmuls it counts.

    Counted in fp32: autocast changes no FLOP, and the counter's decompositions (nn.GRU's) bypass
    autocast, so under bf16 they would mix dtypes and fail.
    """
    try:
        with torch.backends.cudnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            run("fp32")
    except RuntimeError:  # an op without a non-cuDNN kernel here: count with cuDNN (RNNs unseen)
        with FlopCounterMode(display=False) as counter:
            run("fp32")
    return float(counter.get_total_flops())


def pretrain_rate(s: Settings, name: str, batch: int, warmup: int, repeat: int) -> dict:
    enc_kw, pre_kw = kwargs_for(name, s.tiny)
    encoder, _, objective = name.partition("/")  # ENCODER/OBJECTIVE, or an encoder with its own
    if objective == "supervised" and not s.tiny:
        pre_kw = {"label_column": "speaker", **pre_kw}
    config = PretrainConfig(encoder=encoder, objective=objective or None, data=str(s.corpus),
                            steps=warmup + repeat, batch_size=batch, encoder_kwargs=enc_kw, pretext_kwargs=pre_kw,
                            precision=s.precision)
    session = start_session(config, s.out / "throughput" / name, Distributed(s.device), s.device, progress=False)
    made = StepBatches(session.sampler, slice(0, batch), session.pretext.crop_reader())
    start = time.perf_counter()
    batches = [made[step] for step in range(warmup + repeat)]
    loader = batch * len(batches) / (time.perf_counter() - start)
    queue = iter(batches)
    seconds = timed(lambda: train_step(session, session.pretext, *next(queue)), s.device, warmup, repeat)

    def forward_backward(precision: str) -> None:
        wav, lengths, info = batches[0]
        with autocast(s.device, precision):
            loss = session.pretext(wav.to(s.device), lengths.to(s.device), info=info)["loss"]
        loss.float().backward()

    flops = count_flops(forward_backward)
    session.optimizer.zero_grad(set_to_none=True)
    return {"clips_per_s": batch / seconds, "loader_clips_per_s": loader, "gflop_per_batch": flops / 1e9,
            "gflops": flops / seconds / 1e9}


def forward_rate(s: Settings, name: str, batch: int, warmup: int, repeat: int) -> dict:
    torch.manual_seed(0)
    encoder = create_encoder(name, **kwargs_for(name, s.tiny)[0]).to(s.device).eval()
    wav = (0.1 * torch.randn(batch, 16_000, generator=torch.Generator().manual_seed(0))).to(s.device)
    lengths = torch.full((batch,), 16_000, dtype=torch.long, device=s.device)

    def forward(precision: str) -> None:
        with torch.inference_mode(), autocast(s.device, precision):
            encoder(wav, lengths)

    seconds = timed(lambda: forward(s.precision), s.device, warmup, repeat)
    flops = count_flops(forward)
    return {"clips_per_s": batch / seconds, "gflop_per_batch": flops / 1e9, "gflops": flops / seconds / 1e9}


def throughput_section(s: Settings, figures: dict, peaks: dict, report: Report) -> None:
    batch, warmup, repeat = (4, 1, 2) if s.tiny else (32, 2, 5)
    print(f"batch {batch} of 1 s clips, {s.precision}; GFLOP/s as % of the measured fp32 | bf16 matrix product")

    def show(kind: str, name: str, rate: dict) -> None:
        shares = [f"{100 * rate['gflops'] / peaks[k]:.1f}%" for k in ("fp32", "bf16") if peaks.get(k)]
        share = " | ".join(shares) or "no matrix-product rate"
        extra = f", loader {rate['loader_clips_per_s']:.0f} clips/s" if "loader_clips_per_s" in rate else ""
        print(f"{kind:8s} {name:18s} {rate['clips_per_s']:9.1f} clips/s  {rate['gflops']:9.1f} GFLOP/s ({share})"
              + extra, flush=True)

    kinds = (("pretrain", list_pretexts() + list(OBJECTIVE_PAIRS), pretrain_rate),
             ("forward", list_encoders(), forward_rate))
    for kind, names, measure in kinds:
        figures[kind], skipped = {}, {}
        for name in names:
            if encoder_entry(name.partition("/")[0]).family:
                skipped[name] = "a family: its members are other toolkits' checkpoints"
                continue
            try:
                figures[kind][name] = rate = measure(s, name, batch, warmup, repeat)
            except Exception as exc:  # noqa: BLE001 - the next encoder still gets measured
                traceback.print_exc()
                figures[kind][name] = {"error": f"{type(exc).__name__}: {exc}"}
                figures["status"], report.ok = "error", False
                print(f"{kind:8s} {name:18s} ERROR {exc}")
                continue
            finally:
                if s.cuda:
                    torch.cuda.empty_cache()
            show(kind, name, rate)
        figures[f"{kind}_skipped"] = skipped
        if skipped:
            print(f"{kind}: skipped {len(skipped)}: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))


def mfcc39_section(s: Settings, figures: dict, skip_default: bool) -> None:
    if s.tiny:
        size, overrides, epochs, label = "small", TINY_CORPUS, 2, "TINY corpus, 2 epochs (CI smoke)"
    elif skip_default:
        size, overrides, epochs, label = "small", {}, 50, "SMALL corpus (--skip-default-corpus), 50 epochs"
    else:
        size, overrides, epochs, label = "default", {}, 50, "default corpus, 50 epochs"
    start = time.perf_counter()
    manifest = build_apart(size, overrides)
    corpus_seconds = time.perf_counter() - start
    cache = FeatureCache(s.out / "mfcc39-run-cache")
    start = time.perf_counter()
    cached = cache.get_or_build(create_encoder("mfcc39"), manifest, device=str(s.device), progress=False)
    cache_seconds = time.perf_counter() - start
    record = run_experiment(RunConfig(encoder="mfcc39", task=str(manifest.path), epochs=epochs),
                            s.out / "mfcc39-run.jsonl", progress=False, cache=cache, device=str(s.device), force=True)
    epoch_seconds = [h["seconds"] for h in record["history"]]
    figures.update(label=label, clips=len(manifest.table), train_clips=record["train_clips"], epochs=epochs,
                   corpus_seconds=round(corpus_seconds, 2), cache_seconds=round(cache_seconds, 2),
                   cache_hit=cached.stats.hit, run_seconds=record["wall_seconds"],
                   epochs_seconds=round(sum(epoch_seconds), 2), test_acc=record["test_acc"])
    print(f"mfcc39 frozen, {label}: {figures['clips']} clips ({figures['train_clips']} train)")
    print(f"corpus {corpus_seconds:.1f} s, feature cache {cache_seconds:.1f} s{' (hit)' if cached.stats.hit else ''}, "
          f"run {record['wall_seconds']:.1f} s of which {epochs} epochs {sum(epoch_seconds):.1f} s "
          f"({np.mean(epoch_seconds):.2f} s/epoch); test accuracy {record['test_acc']:.4f}")


def ddp_section(s: Settings, figures: dict, timeout: int) -> None:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if s.cuda and gpus < 2:
        figures["status"] = "skipped"
        print(f"skipped: {gpus} GPU(s) visible")
        return
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), __file__, "--ddp-child", str(s.corpus), "--device", s.device.type,
               "--precision", s.precision, "--out", str(s.out / "ddp"), *(["--tiny"] if s.tiny else [])]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"torchrun exited {done.returncode}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.split("DDP-RESULT ", 1)[1].splitlines()[0])
    figures.update(result)
    print(f"2 processes on {result['device_name']} ({result['backend']}), av-joint, global batch {result['batch']}: "
          f"{result['step_seconds'] * 1000:.1f} ms/step, {result['clips_per_s']:.1f} clips/s")


def ddp_child(args: argparse.Namespace) -> None:
    """One rank under torchrun: the loop's own path (pretrain), then timed steps through DDP."""
    device = resolve_device(args.device)  # cuda:LOCAL_RANK under torchrun
    batch, warmup, repeat = (4, 1, 2) if args.tiny else (32, 2, 5)
    enc_kw, pre_kw = kwargs_for("av-joint", args.tiny)
    config = PretrainConfig(encoder="av-joint", data=args.ddp_child, steps=warmup + repeat, batch_size=batch,
                            encoder_kwargs=enc_kw, pretext_kwargs=pre_kw, precision=args.precision)
    summary = pretrain(dataclasses.replace(config, steps=2), Path(args.out) / "loop", progress=False,
                       device=args.device, force=True)
    dist = Distributed(device)
    session = start_session(config, Path(args.out) / "timed", dist, device, progress=False)
    model = dist.wrap(session.pretext)
    made = StepBatches(session.sampler, dist.part(batch), session.pretext.crop_reader())
    queue = iter([made[step] for step in range(warmup + repeat)])
    dist.barrier()
    seconds = timed(lambda: train_step(session, model, *next(queue)), device, warmup, repeat)
    dist.barrier()
    if dist.writer:
        if summary.get("processes") != 2:
            raise RuntimeError(f"pretrain under torchrun ran as {summary.get('processes')} process(es), not 2")
        print("DDP-RESULT " + json.dumps({"device_name": device_name(device), "batch": batch, "step_seconds": seconds,
                                          "clips_per_s": batch / seconds, "processes": dist.world,
                                          "backend": torch.distributed.get_backend()}), flush=True)
    torch.distributed.destroy_process_group()


def run(args: argparse.Namespace, out: Path) -> Report:
    report = Report(args.tiny)
    s = Settings(resolve_device(args.device), args.tiny, args.precision, out)
    with report.section("environment", "a. environment") as figures:
        s = environment(s, figures)
    with report.section("matmul", "b. matrix-multiply rate") as figures:
        matmul_section(s, figures)
    peaks = report.sections["matmul"].get("gflops", {})
    with report.section("parity", "c. CPU-versus-device parity") as figures:
        parity_section(s, figures, report)
    with report.section("throughput", "d. throughput per encoder") as figures:
        throughput_section(s, figures, peaks, report)
    with report.section("mfcc39_run", "e. one 50-epoch mfcc39 run") as figures:
        mfcc39_section(s, figures, args.skip_default_corpus)
    with report.section("ddp", "f. 2-process DDP") as figures:
        ddp_section(s, figures, timeout=120 if args.tiny else 300)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--tiny", action="store_true", help="small models, 48 clips: a CPU smoke run for CI")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="of section d")
    parser.add_argument("--out", help="folder for the runs' outputs (default: a temporary one, removed)")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--skip-default-corpus", action="store_true", help="section e on the small corpus")
    parser.add_argument("--ddp-child", metavar="MANIFEST", help=argparse.SUPPRESS)  # one torchrun rank of f
    args = parser.parse_args()
    flush_denormals()  # as every avbench run does, before torch starts its threads
    if args.ddp_child:
        ddp_child(args)
        return 0
    with contextlib.ExitStack() as stack:
        if not os.environ.get("AVBENCH_DATA"):  # never touch the user's default cache
            os.environ["AVBENCH_DATA"] = stack.enter_context(tempfile.TemporaryDirectory(prefix="avbench-gpucheck-"))
        out = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpucheck-")))
        report = run(args, out)
    total = report.elapsed()
    over = "" if total <= TOTAL_BUDGET_S else " WARNING: over budget"
    print(f"\ntotal {total:.1f} s (budget {TOTAL_BUDGET_S} s){over}; "
          + ("all sections ran, parity passed" if report.ok else "FAILED: see the sections above"))
    if args.json:
        Path(args.json).write_text(json.dumps({"ok": report.ok, "total_seconds": round(total, 2),
                                               "budget_seconds": TOTAL_BUDGET_S, "sections": report.sections},
                                              indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
