"""benchmarks/gpu_check.py in its CI form (`--device cpu --tiny`): every section runs and the
CPU determinism checks pass, so the GPU acceptance script cannot rot between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
SECTIONS = {"environment", "matmul", "parity", "throughput", "mfcc39_run", "ddp"}


def test_the_gpu_check_runs_every_section_on_the_cpu_and_parity_passes(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "AVBENCH_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path / "out"),
                           "--json", str(out)], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert report["ok"] and set(sections) == SECTIONS
    # On the CPU nothing is skipped: DDP runs on two gloo processes.
    assert {k: v["status"] for k, v in sections.items()} == dict.fromkeys(SECTIONS, "ok")
    checks = sections["parity"]["checks"]
    assert len(checks) == 3 and all(c["pass"] for c in checks)
    assert len(sections["parity"]["pretrain"]["cpu"]) == 20
    throughput = sections["throughput"]
    assert {"av-joint", "apc", "wav2vec", "pase+", "resnet18/dino", "resnet18/supervised"} <= set(throughput["pretrain"])
    assert all(r["clips_per_s"] > 0 and r["gflops"] > 0 for r in throughput["pretrain"].values())
    assert "mfcc39" in throughput["forward"] and "s3prl" in throughput["forward_skipped"]
    assert sections["matmul"]["gflops"]["fp32"] > 0 and sections["matmul"]["gflops"]["bf16"] > 0
    assert sections["ddp"]["processes"] == 2 and sections["ddp"]["step_seconds"] > 0
    assert sections["mfcc39_run"]["epochs"] == 2 and "PASS  pretraining loss" in done.stdout
