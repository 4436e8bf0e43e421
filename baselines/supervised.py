"""`resnet18-scratch`: the paper's fully supervised reference.

The 1D ResNet18 raw-waveform encoder (encoders/resnet1d.py, shared with the proposed audiovisual
encoders) trained from random initialisation jointly with the BiGRU on the labelled split only:
evaluate it with `--mode scratch`. In mode frozen it gives the features of a random network, a
sanity floor rather than a baseline of the paper.
"""

from __future__ import annotations

from bench.registry import register_encoder
from encoders.resnet1d import STAGE_CHANNELS, ResNet1dEncoder


@register_encoder("resnet18-scratch")
class ResNet18Scratch(ResNet1dEncoder):
    name = "resnet18-scratch"
    needs_pretraining = False
    default_mode = "scratch"  # what a sweep that names no modes evaluates it in (bench.sweep.default_mode)

    def __init__(self, stage_channels: tuple[int, ...] = STAGE_CHANNELS) -> None:
        super().__init__(stage_channels)
