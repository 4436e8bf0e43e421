"""`avbench corpus frames`: a contact sheet of a corpus's mouth frames, to look at the video.

Rows are clips of unseen test speakers: the speaker's identity still, then every other frame of
the 1 s clip. The words are chosen to include look-alike pairs (bed/bird, no/go), so that what
the lips show, and do not show, is visible.
"""

from __future__ import annotations

from pathlib import Path

from bench.data.corpus.embedded import EmbeddedCorpus

SHOWN_WORDS = ("bed", "bird", "no", "go", "wow", "three", "five", "sheila")


def contact_sheet(corpus: EmbeddedCorpus, out: Path, rows: int = 8, split: str = "test") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = corpus.manifest.table
    table = table[table["split"] == split].sort_values("clip_id")
    picks = table[table["label"].isin(SHOWN_WORDS)]
    # one clip per word, speakers alternating, so the sheet shows several faces
    speakers = sorted(picks["speaker"].unique())
    chosen = []
    for k, word in enumerate(w for w in SHOWN_WORDS if w in set(picks["label"])):
        of_word = picks[picks["label"] == word]
        by_speaker = of_word[of_word["speaker"] == speakers[k % len(speakers)]]
        chosen.append((by_speaker if len(by_speaker) else of_word).iloc[0])
    chosen = chosen[:rows]
    columns = 14
    fig, axes = plt.subplots(len(chosen), columns, figsize=(columns * 0.9, len(chosen) * 1.0), squeeze=False)
    for i, row in enumerate(chosen):
        frames = corpus.frames(row["clip_id"])
        axes[i, 0].imshow(corpus.identity_frame(row["speaker"]), cmap="gray", vmin=0, vmax=255)
        axes[i, 0].set_ylabel(f"{row['label']}\n{row['speaker']}", fontsize=7)
        for j in range(1, columns):
            axes[i, j].imshow(frames[min(2 * (j - 1), len(frames) - 1)], cmap="gray", vmin=0, vmax=255)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("identity", fontsize=7)
    for j in range(1, columns):
        axes[0, j].set_title(f"frame {2 * (j - 1)}", fontsize=6)
    version = corpus.manifest.meta.get("generator_version")
    fig.suptitle(f"embedded-{corpus.manifest.meta.get('corpus_id')} (generator version {version}), {split} speakers",
                 fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
