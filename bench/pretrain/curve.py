"""The pretraining loss curve: loss.csv and loss.png in the run's folder, rewritten at every save."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from bench.files import atomic_write_bytes


def write_curve(out: Path, rows: list[dict[str, Any]], title: str) -> None:
    if not rows:
        return
    columns = list(rows[0])
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "loss.csv", buf.getvalue().encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [c for c in columns if c == "loss" or c.startswith("loss_")]
    # The objective's other logged quantities (DINO's teacher entropies, accuracies) get a panel of
    # their own below the losses: they are on other scales.
    metrics = [c for c in columns if c not in losses and c not in ("step", "epoch")]
    fig, axes = plt.subplots(2 if metrics else 1, 1, figsize=(7, 6.5 if metrics else 4), dpi=100, sharex=True,
                             squeeze=False)
    steps = [r["step"] for r in rows]
    ax = axes[0][0]
    for c in losses:
        ax.plot(steps, [r.get(c, float("nan")) for r in rows], label=c, linewidth=1.5 if c == "loss" else 0.8)
    ax.set_ylabel("loss (mean over logging window)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(losses) > 1:
        ax.legend(fontsize=7, ncol=2)
    if metrics:
        low = axes[1][0]
        for c in metrics:
            low.plot(steps, [r.get(c, float("nan")) for r in rows], label=c, linewidth=1.0)
        low.set_ylabel("logged metrics")
        low.grid(alpha=0.3)
        low.legend(fontsize=7, ncol=2)
    axes[-1][0].set_xlabel("optimizer step")
    png = io.BytesIO()
    fig.tight_layout()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write_bytes(out / "loss.png", png.getvalue())
