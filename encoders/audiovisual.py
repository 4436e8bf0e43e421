"""The proposed encoder: a raw-waveform 1D ResNet18 with audio-only, visual or joint self-supervision.

Three registered names share one architecture (encoders/resnet1d.py: 512-d at 25 Hz, one frame
per 25 fps video frame) and differ only in how they are pretrained:

  av-audio   per 40 ms frame, small heads regress MFCC, log-mel and prosody (log F0 with voicing,
             energy, zero-crossing rate), computed once per clip and standardised with corpus
             statistics (encoders/attributes.py);
  av-visual  a generator draws the speaker's mouth frames from a still identity frame plus the
             audio feature of each frame, trained with L1 against the real frames, optional frame
             and sequence discriminators (encoders/visual.py);
  av-joint   both objectives on the same features, `audio_weight * L_audio + visual_weight *
             L_visual` (the paper's proposed method).

After pretraining each is an audio-only encoder: `av-joint@OUT/encoder.pt`. The log-mel variant
of the visual method (the paper's "L1" baseline) is `logmel-l1` (encoders/logmel_l1.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench.errors import ConfigError
from bench.pretrain.objective import CropInfo, ObjectiveNeeds, Pretext, PretextContext, register_pretext
from bench.registry import register_encoder
from encoders.attribute_pretext import AttributePretext, attribute_pretext
from encoders.resnet1d import HOP, STAGE_CHANNELS, ResNet1dEncoder
from encoders.visual import VisualPretext


class _AudiovisualResNet(ResNet1dEncoder):
    needs_pretraining = True

    def __init__(self, stage_channels: tuple[int, ...] = STAGE_CHANNELS) -> None:
        super().__init__(stage_channels)


@register_encoder("av-audio")
class AVAudio(_AudiovisualResNet):
    name = "av-audio"


@register_encoder("av-visual")
class AVVisual(_AudiovisualResNet):
    name = "av-visual"


@register_encoder("av-joint")
class AVJoint(_AudiovisualResNet):
    name = "av-joint"


class JointPretext(Pretext):
    """Audio-attribute regression and mouth generation on one pass of the encoder."""

    crop_align = HOP  # both objectives slice their targets on the 25 Hz grid

    def __init__(self, encoder: nn.Module, context: PretextContext, audio_weight: float = 1.0,
                 visual_weight: float = 1.0, audio: dict | None = None, visual: dict | None = None) -> None:
        super().__init__()
        if audio_weight < 0 or visual_weight < 0 or audio_weight + visual_weight == 0:
            raise ConfigError(f"av-joint: audio_weight and visual_weight must be >= 0 and not both 0, got "
                              f"{audio_weight}, {visual_weight}")
        self.encoder = encoder
        self.audio_weight, self.visual_weight = float(audio_weight), float(visual_weight)
        self.audio: AttributePretext = attribute_pretext(encoder, context, **(audio or {}))
        self.visual = VisualPretext(encoder, context, **(visual or {}))
        self.default_lr = self.visual.default_lr

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        if info is None:
            raise ConfigError("av-joint: the visual objective needs CropInfo (the manifest rows of the crops)")
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        feats, out_len = self.encoder(wav, lengths)
        audio = self.audio.loss_from_features(feats, out_len, wav, lengths, info)
        visual = self.visual.loss_from_features(feats, out_len, info)
        out = {"loss": self.audio_weight * audio["loss"] + self.visual_weight * visual["loss"]}
        out.update({f"loss_audio_{k[5:]}": v for k, v in audio.items() if k.startswith("loss_")})
        out.update({f"loss_visual_{k[5:]}": v for k, v in visual.items() if k.startswith("loss_")})
        out.update({f"visual_{k}": v for k, v in visual.items() if not k.startswith("loss")})
        return out

    def crop_reader(self):
        return self.visual.crop_reader()  # the audio targets are sliced from an in-memory cache

    def snapshot(self, out_dir: str | Path, step: int) -> dict[str, float]:
        return self.visual.snapshot(out_dir, step)

    def config(self) -> dict:
        return {"audio_weight": self.audio_weight, "visual_weight": self.visual_weight,
                "audio": self.audio.config(), "visual": self.visual.config()}


def _own(name: str, mouth_frames: bool) -> ObjectiveNeeds:
    """The audiovisual objectives slice their targets on the 25 Hz video grid."""
    return ObjectiveNeeds(encoders=(name,), mouth_frames=mouth_frames, frame_rate=16_000 / HOP)


register_pretext("av-audio", needs=_own("av-audio", False))(attribute_pretext)


@register_pretext("av-visual", needs=_own("av-visual", True))
def visual_pretext(encoder: nn.Module, context: PretextContext, **kwargs) -> VisualPretext:
    return VisualPretext(encoder, context, **kwargs)


@register_pretext("av-joint", needs=_own("av-joint", True))
def joint_pretext(encoder: nn.Module, context: PretextContext, **kwargs) -> JointPretext:
    return JointPretext(encoder, context, **kwargs)
