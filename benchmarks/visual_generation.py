"""Does the visual pretext learn? Generated mouth frames against the audio-blind baselines.

Loads a pretraining run's last checkpoint (av-visual, av-joint or logmel-l1) and generates the
mouth frames of held-out clips (the valid and test splits: speakers never seen in pretraining)
from each speaker's still frame plus the audio. Prints, per split, the mean pixel L1 (frames in
[0, 1], valid frames only) of the generated frames and of the two baselines that ignore the
audio: the still frame repeated ("identity") and the mean training frame; plus the share of clips
whose generated frames beat the identity baseline. Writes a real-vs-generated grid per split.

    python benchmarks/visual_generation.py $AVBENCH_DATA/pretrained/av-joint-b8 --clips 96
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def load_pretext(run: Path):
    from bench.data.tasks import resolve_task
    from bench.pretrain.objective import PretextContext, pretext_factory
    from bench.registry import create_encoder

    summary = json.loads((run / "pretrain.json").read_text())
    config = summary["config"]
    manifest = resolve_task(config["data"], progress=False)
    encoder = create_encoder(config["encoder"], **config["encoder_kwargs"])
    context = PretextContext(sample_rate=encoder.sample_rate, manifest=manifest, generator=torch.Generator())
    pretext = pretext_factory(config["encoder"])(encoder, context, **config["pretext_kwargs"])
    saved = torch.load(run / "checkpoint-last.pt", map_location="cpu", weights_only=False)
    pretext.load_state_dict(saved["pretext"])
    return pretext.eval(), manifest, summary


def main() -> None:
    from encoders.visual import _evaluate, _write_grid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an `avbench pretrain` output folder")
    parser.add_argument("--clips", type=int, default=96, help="held-out clips per split (evenly spaced)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    pretext, manifest, summary = load_pretext(args.run)
    visual = getattr(pretext, "visual", pretext)
    print(f"{summary['encoder']} after {summary['step']} steps of batch {summary['config']['batch_size']} "
          f"on {summary['data_name']}")
    for split in ("valid", "test"):
        result = _evaluate(visual, manifest, split, args.clips)
        examples = result.pop("_examples")
        real, generated, stills, counts = examples
        valid = torch.arange(real.shape[1])[None, :] < torch.as_tensor(counts)[:, None]
        diff_gen = (torch.as_tensor(generated) - torch.as_tensor(real)).abs().mean((2, 3))
        diff_id = (torch.as_tensor(stills)[:, None] - torch.as_tensor(real)).abs().mean((2, 3))
        per_clip_gen = (diff_gen * valid).sum(1) / valid.sum(1)
        per_clip_id = (diff_id * valid).sum(1) / valid.sum(1)
        frames_better = float(((diff_gen < diff_id) & valid).sum() / valid.sum())
        clips = float((per_clip_gen < per_clip_id).float().mean())
        grid = args.run / f"frames-heldout-{split}.png"
        _write_grid(grid, tuple(x[:8] for x in examples))
        print(f"{split:5s} ({result['clips']} clips, {result['frames']} frames): L1 generated "
              f"{result['l1_generated']:.5f}, identity frame {result['l1_identity']:.5f} "
              f"({100 * (1 - result['l1_generated'] / result['l1_identity']):.1f}% lower), mean frame "
              f"{result['l1_mean_frame']:.5f}; generated beats identity on {100 * clips:.0f}% of clips and "
              f"{100 * frames_better:.0f}% of frames; grid {grid}")


if __name__ == "__main__":
    main()
