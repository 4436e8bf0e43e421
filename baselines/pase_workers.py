"""The PASE+ self-supervised objective: workers, their targets, and online contamination.

PASE+ (Ravanelli et al. 2020) trains its encoder by making small "workers" solve many tasks from
the features of a *contaminated* waveform, with every target computed from the *clean* one. This
module follows the public recipe (santi-pdp/pase: cfg/PASE+workers.cfg, cfg/distortions/pase+.cfg,
pase/transforms.py, pase/models/Minions/{minions,cls_minions}.py), within what the avbench loop
gives an objective (a batch of clean crops and their lengths):

Workers (all MLP heads read the 256-d encoder output frame by frame):
- cchunk: waveform decoder, three transposed convolutions (512, 256, 128 maps; kernel 30; strides
  4, 4, 10, i.e. x160 back to samples; PReLU) + a 64-unit 1x1 layer + a 1x1 output, L1 loss on the
  clean waveform.
- lps, lps_long: log power spectrum (|STFT|^2 in dB, rectangular window of 400 / 512 samples, 2048-
  point FFT), 1025 bins.
- fbank, fbank_long: 40 log mel energies as python_speech_features' logfbank (pre-emphasis 0.97,
  rectangular 400 / 1024-sample frames starting at 0, 512 / 1024-point FFT, HTK-style triangles).
- gtn, gtn_long: 40 log gammatone energies from 500 Hz up (ERB spacing), 400 / 2048-sample windows.
- mfcc (13) and mfcc_long (20 coefficients, 2048-sample window), as librosa.feature.mfcc.
- prosody: log F0 (interpolated through unvoiced frames), voicing, RMS energy and zero-crossing
  rate on 320-sample windows.
  Every regression target has its first and second deltas appended (der_order 2, librosa width 9),
  giving 3075, 120, 120, 39, 60 and 12 outputs; heads are 1x1 conv 256 -> 256 -> PReLU -> outputs,
  MSE loss.
- mi (local info max, LIM) and cmi (global info max, GIM): a 256-unit MLP discriminator on the
  concatenation of two embeddings, BCE with logits: LIM per frame (a frame with another frame of
  the same clip vs with a frame of another clip in the batch), GIM on time averages (first half
  of a clip with its second half vs with the second half of another clip; both orders, the
  reference's "augment"). The reference draws its pairs from separate 1 s chunks of the same and of
  another utterance; the loop here feeds one crop per utterance, so the pairs come from within it.
- The loss is the unweighted sum of the worker losses, as in the reference.

Simplifications, stated plainly:
- Targets are z-normalised per dimension with the statistics of the batch's valid frames; the
  reference normalises with statistics precomputed over the training set (--stats).
- The reference predicts r = 7 frames per output (num_outputs * r); here each frame predicts its own.
- F0 comes from a batched normalised-autocorrelation tracker (Boersma 1993: window-corrected
  autocorrelation, 60-300 Hz, voicing threshold 0.45, octave cost 0.01, silence below 5% of the
  clip's loudest frame), not SWIPE (pysptk); gammatone energies use FFT weighting (4th-order
  gammatone magnitude responses), like gammatone.fftweight, not the IIR gtgram; the spectral
  targets zero-pad the clip edges where the reference reflects.
- Contamination (applied to the encoder input only, each with its own probability, in this order):
  reverb 0.5 (a synthetic exponentially decaying impulse response, RT60 0.2-0.8 s, instead of the
  reference's measured ones), overlap 0.1 (another clip of the batch at 5 / 7.5 / 10 dB, shifted),
  additive noise 0.4 (a random segment of the corpus noise recordings at 0 / 5 / 10 dB), band-drop
  0.35 (a random band zeroed in the spectrum instead of the reference's precomputed FIR notches),
  low-pass 0.25 (the 16 -> 8 kHz resampling filter, as a 4 kHz brick wall), time masking 0.2 (1-2
  chops of N(0.05, 0.025) or N(0.1, 0.05) s, at random places rather than VAD-chosen ones),
  clipping 0.2 (at 0.1 / 0.3 / 0.5 of the clip's extremes). Each operation keeps the clip's energy
  where the reference does (reverb, noise, overlap, filters). No random rescaling of the input.
All randomness draws from `context.generator` (seeded and checkpointed by the pretraining loop).

Layout: this module holds the workers (their heads and losses) and registers the "pase+" pretext;
the regression targets are computed in baselines.pase_targets and the contamination in
baselines.pase_contamination. The names the tests and callers used from here before that split
(pitch, prosody, compute_targets, Contamination, ...) are still importable from here.
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn

from baselines import functional as AF
# CONTAMINATIONS, DEFAULT_PROBS, pitch and prosody are not used here but stay importable from
# this module, where callers (and tests/test_pase.py) have always found them.
from baselines.pase_contamination import CONTAMINATIONS, DEFAULT_PROBS, Contamination  # noqa: F401
from baselines.pase_targets import (HOP, REGRESSION_WORKERS, SAMPLE_RATE, compute_targets,  # noqa: F401
                                    pitch, prosody, target_dims)
from bench.errors import ConfigError
from bench.pretrain.objective import Pretext, PretextContext, register_pretext

log = logging.getLogger("avbench.pase")

DEFAULT_WORKERS = ("cchunk",) + REGRESSION_WORKERS + ("mi", "cmi")


class MLPBlock(nn.Module):
    """pase MLPBlock: a 1x1 convolution and a PReLU."""

    def __init__(self, ninp: int, fmaps: int) -> None:
        super().__init__()
        self.W = nn.Conv1d(ninp, fmaps, 1)
        self.act = nn.PReLU(fmaps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.W(x))


class MLPHead(nn.Module):
    """pase MLPMinion: hidden_layers MLPBlocks then a 1x1 output layer, frame by frame ([B, C, T])."""

    def __init__(self, num_inputs: int, num_outputs: int, hidden_size: int = 256, hidden_layers: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        ninp = num_inputs
        for _ in range(hidden_layers):
            self.blocks.append(MLPBlock(ninp, hidden_size))
            ninp = hidden_size
        self.W = nn.Conv1d(ninp, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.W(x)


class DeconvBlock(nn.Module):
    """pase GDeconv1DBlock without normalisation: transposed conv, end crop, PReLU."""

    def __init__(self, ninp: int, fmaps: int, kwidth: int, stride: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose1d(ninp, fmaps, kwidth, stride=stride, padding=max(0, (stride - kwidth) // -2))
        self.act = nn.PReLU(fmaps, init=0)
        self.crop = (stride % 2 != 0 and kwidth % 2 == 0) or (stride % 2 == 0 and kwidth % 2 != 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.deconv(x)
        if self.crop:
            h = h[..., :-1]
        return self.act(h)


class WaveDecoder(nn.Module):
    """pase DecoderMinion (the "cchunk" worker): features at 100 Hz back to 16 kHz samples."""

    def __init__(self, num_inputs: int, fmaps=(512, 256, 128), kwidths=(30, 30, 30), strides=(4, 4, 10),
                 hidden_size: int = 64, hidden_layers: int = 1) -> None:
        super().__init__()
        if not (len(fmaps) == len(kwidths) == len(strides)):
            raise ConfigError("pase+: decoder_fmaps, decoder_kwidths and decoder_strides need one length each")
        self.blocks = nn.ModuleList()
        ninp = num_inputs
        for fmap, kw, st in zip(fmaps, kwidths, strides):
            self.blocks.append(DeconvBlock(ninp, fmap, kw, st))
            ninp = fmap
        for _ in range(hidden_layers):
            self.blocks.append(MLPBlock(ninp, hidden_size))
            ninp = hidden_size
        self.W = nn.Conv1d(ninp, 1, 1)
        with torch.no_grad():
            for n in (1, 3):
                out = self(torch.zeros(1, num_inputs, n)).shape[-1]
                if out != HOP * n:
                    raise ConfigError(f"pase+: the waveform decoder turns {n} frames into {out} samples, not "
                                      f"{HOP * n}; its strides must multiply to {HOP} with matching kernels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.W(x)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values [B, D, T] over the positions of mask [B, T] (and all D)."""
    m = mask.unsqueeze(1).to(values.dtype)
    return (values * m).sum() / (m.sum() * values.shape[1]).clamp(min=1)


class PASEPretext(Pretext):
    """PASE+'s multi-task objective around an encoder at 100 Hz (see the module docstring)."""

    default_lr = 5e-4  # the reference trains its workers at 5e-4 (--min_lr) and its encoder at 1e-3 (--fe_lr)

    def __init__(self, encoder: nn.Module, context: PretextContext, workers=DEFAULT_WORKERS, hidden_size: int = 256,
                 lps_n_fft: int = 2048, decoder_fmaps=(512, 256, 128), decoder_kwidths=(30, 30, 30),
                 decoder_strides=(4, 4, 10), decoder_hidden: int = 64, normalize_targets: bool = True,
                 p_reverb: float = 0.5, p_overlap: float = 0.1, p_noise: float = 0.4, p_bandrop: float = 0.35,
                 p_lowpass: float = 0.25, p_chop: float = 0.2, p_clip: float = 0.2, noise_snrs=(0.0, 5.0, 10.0),
                 overlap_snrs=(5.0, 7.5, 10.0), clip_factors=(0.1, 0.3, 0.5),
                 chop_factors=((0.05, 0.025), (0.1, 0.05)), max_chops: int = 2, rt60=(0.2, 0.8)) -> None:
        super().__init__()
        rate = getattr(encoder, "sample_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE or float(encoder.frame_rate) != SAMPLE_RATE / HOP:
            raise ConfigError(f"pase+ pretext: the encoder must read 16 kHz audio and give 100 frames per second "
                              f"(got {encoder.sample_rate} Hz, {encoder.frame_rate} fps)")
        workers = tuple(workers)
        unknown = sorted(set(workers) - set(DEFAULT_WORKERS))
        if unknown or not workers:
            raise ConfigError(f"pase+ pretext: unknown workers {unknown or '(none given)'}; "
                              f"choose from {', '.join(DEFAULT_WORKERS)}")
        probs = {"reverb": p_reverb, "overlap": p_overlap, "noise": p_noise, "bandrop": p_bandrop,
                 "lowpass": p_lowpass, "chop": p_chop, "clip": p_clip}
        bad = {k: v for k, v in probs.items() if not 0.0 <= float(v) <= 1.0}
        if bad:
            raise ConfigError(f"pase+ pretext: contamination probabilities must lie in [0, 1], got {bad}")
        for name, values in (("noise_snrs", noise_snrs), ("overlap_snrs", overlap_snrs), ("clip_factors", clip_factors),
                             ("chop_factors", chop_factors)):
            if len(values) == 0:
                raise ConfigError(f"pase+ pretext: {name} must not be empty")
        if not 0 < float(rt60[0]) <= float(rt60[1]):
            raise ConfigError(f"pase+ pretext: rt60 must be (low, high) seconds with 0 < low <= high, got {rt60}")
        if int(max_chops) < 1 or int(lps_n_fft) < 2:
            raise ConfigError("pase+ pretext: max_chops must be >= 1 and lps_n_fft >= 2")
        self.encoder = encoder
        self.context = context
        self.workers = workers
        self.regression = tuple(w for w in workers if w in REGRESSION_WORKERS)
        self.lps_n_fft = int(lps_n_fft)
        self.normalize_targets = bool(normalize_targets)
        dim = int(encoder.dim)
        dims = target_dims(self.lps_n_fft)
        self.heads = nn.ModuleDict({w: MLPHead(dim, dims[w], hidden_size) for w in self.regression})
        if "cchunk" in workers:
            self.heads["cchunk"] = WaveDecoder(dim, decoder_fmaps, decoder_kwidths, decoder_strides, decoder_hidden)
        for w in ("mi", "cmi"):
            if w in workers:
                self.heads[w] = MLPHead(2 * dim, 1, hidden_size)
        self.contamination = Contamination(context.generator, list(context.noise_sources), probs,
                                           noise_snrs=noise_snrs, overlap_snrs=overlap_snrs,
                                           clip_factors=clip_factors, chop_factors=chop_factors,
                                           max_chops=max_chops, rt60=rt60)
        self._settings = dict(workers=list(workers), hidden_size=hidden_size, lps_n_fft=self.lps_n_fft,
                              decoder_fmaps=list(decoder_fmaps), decoder_kwidths=list(decoder_kwidths),
                              decoder_strides=list(decoder_strides), decoder_hidden=decoder_hidden,
                              normalize_targets=self.normalize_targets, probs=probs,
                              noise_snrs=list(noise_snrs), overlap_snrs=list(overlap_snrs),
                              clip_factors=list(clip_factors), chop_factors=[list(c) for c in chop_factors],
                              max_chops=int(max_chops), rt60=list(rt60),
                              noise_sources=len(context.noise_sources))
        self._warned_pairs = False

    def config(self) -> dict:
        return dict(self._settings)

    def compute_targets(self, clean: torch.Tensor,
                        lengths: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return compute_targets(clean, lengths, self.regression, self.lps_n_fft, self.normalize_targets)

    def contaminate(self, clean: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.contamination(clean, lengths)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor, info=None) -> dict[str, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        T = wav.shape[-1]
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=T)
        clean = wav * AF.length_mask(lengths, T).to(wav.dtype)
        with torch.no_grad():
            targets, t_frames = self.compute_targets(clean, lengths)
            noisy = self.contaminate(clean, lengths)
        feats, f_len = self.encoder(noisy, lengths)
        h = feats.transpose(1, 2)  # [B, dim, T']
        f_len = f_len.to(wav.device)
        losses: dict[str, torch.Tensor] = {}
        for name in self.regression:
            tgt = targets[name]
            common = min(h.shape[-1], tgt.shape[-1])
            mask = AF.length_mask(torch.minimum(f_len, t_frames), common)
            pred = self.heads[name](h[..., :common])
            losses[name] = _masked_mean((pred - tgt[..., :common]).square(), mask)
        if "cchunk" in self.workers:
            pred = self.heads["cchunk"](h)[:, 0]
            common = min(pred.shape[-1], T)
            mask = AF.length_mask(torch.minimum(lengths, HOP * f_len), common)
            losses["cchunk"] = _masked_mean((pred[:, :common] - clean[:, :common]).abs().unsqueeze(1), mask)
        if "mi" in self.workers or "cmi" in self.workers:
            if h.shape[0] < 2:
                if not self._warned_pairs:
                    log.warning("pase+: the info-max workers need at least 2 clips per batch; skipping them")
                    self._warned_pairs = True
                for name in ("mi", "cmi"):
                    if name in self.workers:
                        losses[name] = h.new_zeros(())
            else:
                if "mi" in self.workers:
                    losses["mi"] = self._local_info_max(h, f_len)
                if "cmi" in self.workers:
                    losses["cmi"] = self._global_info_max(h, f_len)
        total = sum(losses.values())
        return {"loss": total, **{f"loss_{name}": value for name, value in losses.items()}}

    def _other_clip(self, B: int, device) -> torch.Tensor:
        shift = int(torch.randint(1, B, (1,), generator=self.context.generator))
        return (torch.arange(B) + shift).remainder(B).to(device)

    def _local_info_max(self, h: torch.Tensor, f_len: torch.Tensor) -> torch.Tensor:
        """LIM: each valid frame with another frame of its clip (1) vs a frame of another clip (0)."""
        B, _, Tp = h.shape
        dev = h.device
        other = self._other_clip(B, dev)
        t = torch.arange(Tp, device=dev).unsqueeze(0)
        n = f_len.clamp(min=1).unsqueeze(1)
        step = 1 + (torch.rand(B, Tp, generator=self.context.generator).to(dev) * (n - 1).clamp(min=0)).long()
        pos = torch.where(n > 1, (t + step).remainder(n), torch.zeros_like(t))
        n_other = n[other]
        neg = (torch.rand(B, Tp, generator=self.context.generator).to(dev) * n_other).long().clamp(max=Tp - 1)
        pick = lambda src, idx: src.gather(2, idx.unsqueeze(1).expand(-1, src.shape[1], -1))  # noqa: E731
        x_pos = torch.cat([h, pick(h, pos)], dim=1)
        x_neg = torch.cat([h, pick(h[other], neg)], dim=1)
        logits = self.heads["mi"](torch.cat([x_pos, x_neg], dim=0))[:, 0]  # [2B, Tp]
        labels = torch.cat([torch.ones(B, Tp), torch.zeros(B, Tp)]).to(logits)
        mask = AF.length_mask(f_len, Tp).repeat(2, 1)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (bce * mask).sum() / mask.sum().clamp(min=1)

    def _global_info_max(self, h: torch.Tensor, f_len: torch.Tensor) -> torch.Tensor:
        """GIM: mean of a clip's first half with its second half (1) vs another clip's second half (0)."""
        B, _, Tp = h.shape
        dev = h.device
        other = self._other_clip(B, dev)
        half = torch.div(f_len, 2, rounding_mode="floor").clamp(min=1)
        first = AF.length_mask(half, Tp)
        second = AF.length_mask(f_len, Tp) & ~first
        second = torch.where(second.any(dim=1, keepdim=True), second, first)  # one-frame clips
        avg = lambda m: (h * m.unsqueeze(1)).sum(-1) / m.sum(-1, keepdim=True).clamp(min=1)  # noqa: E731
        a, c = avg(first), avg(second)
        r = c[other]
        pos = torch.cat([torch.cat([a, c], 1), torch.cat([c, a], 1)])
        neg = torch.cat([torch.cat([a, r], 1), torch.cat([c, r], 1)])
        logits = self.heads["cmi"](torch.cat([pos, neg]).unsqueeze(-1))[:, 0, 0]
        labels = torch.cat([torch.ones(2 * B), torch.zeros(2 * B)]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, labels)


_PRETEXT_KWARGS = tuple(p for p in inspect.signature(PASEPretext.__init__).parameters
                        if p not in ("self", "encoder", "context"))


@register_pretext("pase+")
def pase_plus_pretext(encoder: nn.Module, context: PretextContext, **kwargs) -> PASEPretext:
    """PASE+'s workers and contamination around `encoder`; keywords as PASEPretext."""
    unknown = sorted(set(kwargs) - set(_PRETEXT_KWARGS))
    if unknown:
        raise ConfigError(f"pase+ pretext: unknown settings {unknown}; known: {', '.join(_PRETEXT_KWARGS)}")
    return PASEPretext(encoder, context, **kwargs)
