"""APC (Autoregressive Predictive Coding, Chung et al. 2019): encoder, published checkpoints, pretext.

The model is s3prl's `upstream/apc` APC (itself from the authors' VQ-APC code) without VQ, with
the same module names so that its published state dicts load as they are:

    rnn_layers   ModuleList of single-layer unidirectional nn.GRU(batch_first=True), 80 -> 512 -> 512 -> 512
    rnn_dropout  nn.Dropout(0.1) on every layer's output (the last one too), before the residual
    postnet      nn.Linear(512, 80): the regression head of the pretext (part of the state dict)

and a boolean `rnn_residual`: layer i > 0 adds its input to its (dropped-out) output. s3prl never
adds a residual to the first layer, whose input is the 80-d fbank; its APC has no prenet (the
original APC code's optional prenet is not part of any published s3prl checkpoint), so neither
does this one. Keys: rnn_layers.{i}.{weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0},
postnet.{weight, bias}; 4,105,296 parameters at the published size.

Input features are s3prl's: `torchaudio.compliance.kaldi.fbank` with 80 bins, 25 ms / 10 ms,
window_type "hamming" (hard-coded by s3prl, Kaldi's own default is "povey"), everything else at
torchaudio's defaults (no dither, DC removal, pre-emphasis 0.97, 512-point FFT, 20 Hz..Nyquist,
snip_edges), then per-utterance CMVN (x - mean) / (1e-10 + unbiased std). baselines.kaldi
re-implements that front end for padded batches. Because of snip_edges, a clip of n samples has
1 + (n - 400) // 160 frames (1 s -> 98 frames, not 101 like the librosa-style baselines), and a
clip shorter than 400 samples (25 ms) has none: the encoder refuses it with a ConfigError naming
the clip, as torchaudio refuses it too.

Representation: the hidden states of layer `layer` (default -1, the last; 0-based, the same
indexing as s3prl's `hidden_states`: index i is the output of GRU i after dropout and residual),
512-d at 100 Hz. Padding never leaks: the GRUs are unidirectional, so a valid frame never sees a
later (padded) one, and each layer's outputs are zeroed past the clip's frames, exactly what
s3prl's pack/pad round trip yields.

Pretext (`@register_pretext("apc")`): L1 between postnet(h_t) of the last layer and the input
frame x_{t+n} (n_ahead=3, the paper's common choice; s3prl's pretraining config uses n_future=5),
over valid t < frames - n only (s3prl's L1Loss also averages over the zero padding).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from baselines import kaldi
from bench.checkpoints import load_published_checkpoint
from bench.errors import ConfigError
from bench.pretrain.objective import Pretext, PretextContext, register_pretext
from bench.registry import Encoder, load_state_exactly, register_encoder

log = logging.getLogger("avbench.apc")

# Bump when a change to this module or baselines.kaldi changes the features: cached ones go stale.
FEATURE_VERSION = 1

# kaldi.fbank's defaults for the options s3prl's APC front end passes through from the checkpoint's
# `config.data.audio` (anything but feat_type, feat_dim, decode_wav and cmvn goes to kaldi.fbank).
# Keys mapped to None must hold that value (we implement only it); the others name our kwarg.
_FBANK_DEFAULTS: dict[str, Any] = {
    "frame_length": 25.0, "frame_shift": 10.0, "preemphasis_coefficient": 0.97, "remove_dc_offset": True,
    "round_to_power_of_two": True, "low_freq": 20.0, "high_freq": 0.0,
    "dither": 0.0, "snip_edges": True, "use_energy": False, "use_log_fbank": True, "use_power": True,
    "subtract_mean": False, "vtln_warp": 1.0, "min_duration": 0.0, "channel": -1,
}
_FBANK_FIXED = {"snip_edges", "use_energy", "use_log_fbank", "use_power", "subtract_mean", "vtln_warp",
                "min_duration", "channel"}
# Options that only affect the (unused) energy column, or VTLN which vtln_warp=1 switches off.
_FBANK_IRRELEVANT = {"energy_floor", "raw_energy", "htk_compat", "vtln_low", "vtln_high", "blackman_coeff"}
_PARAS = ("num_layers", "hidden_size", "dropout", "residual")


def _kwargs_hint(field: str, value: Any) -> str:
    return (f"build the encoder with {field}={value!r} (e.g. `encoder_kwargs: {{{field}: {value!r}}}` in the run "
            f"config, or create_encoder('apc@CKPT', {field}={value!r}))")


@register_encoder("apc")
class APC(Encoder):
    """3-layer unidirectional GRU (512) over 80-d Kaldi fbank + CMVN; s3prl's APC, loadable as published.

    kwargs: num_layers=3, hidden_size=512, dropout=0.1, residual=True, input_size=80 (fbank bins),
    layer=-1 (which layer's hidden states are the features), and the fbank options of
    baselines.kaldi.fbank (frame_length/frame_shift in ms, window_type, preemphasis_coefficient,
    remove_dc_offset, round_to_power_of_two, low_freq, high_freq), cmvn=True, cmvn_eps=1e-10.
    """

    name = "apc"
    frame_rate = 100.0
    needs_pretraining = True
    trainable = True

    def __init__(self, num_layers: int = 3, hidden_size: int = 512, dropout: float = 0.1, residual: bool = True,
                 input_size: int = 80, layer: int = -1, frame_length: float = 25.0, frame_shift: float = 10.0,
                 window_type: str = "hamming", preemphasis_coefficient: float = 0.97,
                 remove_dc_offset: bool = True, round_to_power_of_two: bool = True, low_freq: float = 20.0,
                 high_freq: float = 0.0, cmvn: bool = True, cmvn_eps: float = 1e-10) -> None:
        super().__init__()
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ConfigError(f"apc: num_layers, hidden_size and input_size must be positive, got "
                              f"{num_layers}, {hidden_size}, {input_size}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"apc: dropout must be in [0, 1), got {dropout}")
        if not -num_layers <= layer < num_layers:
            raise ConfigError(f"apc: layer must be in {-num_layers}..{num_layers - 1} (0-based, -1 = last) for "
                              f"num_layers={num_layers}, got {layer}")
        if window_type not in kaldi.WINDOW_TYPES:
            raise ConfigError(f"apc: unknown window_type {window_type!r}; use one of {', '.join(kaldi.WINDOW_TYPES)}")
        if not 0.0 <= preemphasis_coefficient <= 1.0:
            raise ConfigError(f"apc: preemphasis_coefficient must be in [0, 1], got {preemphasis_coefficient}")
        self.num_layers = int(num_layers)
        self.hidden_size = int(hidden_size)
        self.dropout = float(dropout)
        self.input_size = int(input_size)
        self.layer = int(layer)
        self.frame_length = float(frame_length)
        self.frame_shift = float(frame_shift)
        self.window_type = window_type
        self.preemphasis_coefficient = float(preemphasis_coefficient)
        self.remove_dc_offset = bool(remove_dc_offset)
        self.round_to_power_of_two = bool(round_to_power_of_two)
        self.low_freq = float(low_freq)
        self.high_freq = float(high_freq)
        self.cmvn = bool(cmvn)
        self.cmvn_eps = float(cmvn_eps)
        self.win_size, self.hop, self.n_fft = kaldi.window_sizes(self.sample_rate, self.frame_length,
                                                                 self.frame_shift, self.round_to_power_of_two)
        self.frame_rate = self.sample_rate / self.hop
        self.first_frame_centre_s = (self.win_size - 1) / 2 / self.sample_rate  # Kaldi's snip_edges frames
        self.dim = self.hidden_size
        banks = kaldi.mel_banks(self.input_size, self.n_fft, float(self.sample_rate), self.low_freq, self.high_freq)
        # Non-persistent buffers follow .to(device) but stay out of state_dict, which must be s3prl's.
        self.register_buffer("fbank_window", kaldi.feature_window(window_type, self.win_size).float().clone(),
                             persistent=False)
        self.register_buffer("mel_banks", banks.float().clone(), persistent=False)

        # s3prl's module names and shapes, so its state dicts load unchanged.
        sizes_in = [self.input_size] + [self.hidden_size] * (self.num_layers - 1)
        self.rnn_layers = nn.ModuleList(nn.GRU(input_size=n, hidden_size=self.hidden_size, batch_first=True)
                                        for n in sizes_in)
        self.rnn_dropout = nn.Dropout(self.dropout)
        self.rnn_residual = bool(residual)
        self.postnet = nn.Linear(self.hidden_size, self.input_size)

    # ----------------------------------------------------------------------------- features
    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return kaldi.num_frames(torch.as_tensor(lengths), self.win_size, self.hop)

    def features(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input: fbank (+ CMVN) [B, frames, input_size] and the valid frame counts [B]."""
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        short = (lengths < self.win_size).nonzero().flatten().tolist()
        if short:
            raise ConfigError(f"apc: clip(s) {short} of the batch have {lengths[short].tolist()} samples, fewer than "
                              f"one {self.frame_length:g} ms window ({self.win_size} samples): Kaldi-style "
                              "fbank (snip_edges) gives them no frame. Pad or drop clips that short.")
        feats, frames = kaldi.fbank(wav, lengths, sample_rate=self.sample_rate, num_mel_bins=self.input_size,
                                    frame_length=self.frame_length, frame_shift=self.frame_shift,
                                    window_type=self.window_type,
                                    preemphasis_coefficient=self.preemphasis_coefficient,
                                    remove_dc_offset=self.remove_dc_offset,
                                    round_to_power_of_two=self.round_to_power_of_two, low_freq=self.low_freq,
                                    high_freq=self.high_freq, window=self.fbank_window, banks=self.mel_banks)
        if self.cmvn:
            feats = kaldi.utterance_cmvn(feats, frames, eps=self.cmvn_eps)
        return feats, frames

    def encode_features(self, feats: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Run the GRU stack on precomputed features [B, T, input_size]; every layer's hidden states.

        Returns num_layers tensors [B, T, hidden_size] (s3prl's hidden_states order), each zero past
        `lengths`. Same arithmetic as s3prl's APC.forward on the same input: GRU, dropout, then the
        residual (layers > 0). Input frames past `lengths` are zeroed first.
        """
        if feats.dim() != 3 or feats.shape[-1] != self.input_size:
            raise ValueError(f"feats must be [B, T, {self.input_size}], got shape {tuple(feats.shape)}")
        T = feats.shape[1]
        lengths = torch.as_tensor(lengths, device=feats.device).to(torch.long)
        mask = (torch.arange(T, device=feats.device) < lengths[:, None]).unsqueeze(-1).to(feats.dtype)
        x = feats * mask
        hiddens = []
        for i, gru in enumerate(self.rnn_layers):
            # Unidirectional: output t depends on inputs <= t only, so running over the padding (instead
            # of packing) cannot change valid frames; the mask restores s3prl's zeros past the end.
            out, _ = gru(x)
            out = self.rnn_dropout(out)
            if self.rnn_residual and i > 0:
                out = out + x
            x = out * mask
            hiddens.append(x)
        return hiddens

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, frames = self.features(wav, lengths)
        return self.encode_features(feats, frames)[self.layer], frames

    def config(self) -> dict:
        # dropout is left out: it changes no feature at inference (and finetuning does not cache).
        return {**super().config(), "version": FEATURE_VERSION, "sample_rate": self.sample_rate,
                "num_layers": self.num_layers, "hidden_size": self.hidden_size, "residual": self.rnn_residual,
                "input_size": self.input_size, "layer": self.layer, "fbank": "kaldi",
                "frame_length": self.frame_length, "frame_shift": self.frame_shift,
                "window_type": self.window_type, "preemphasis_coefficient": self.preemphasis_coefficient,
                "remove_dc_offset": self.remove_dc_offset, "round_to_power_of_two": self.round_to_power_of_two,
                "low_freq": self.low_freq, "high_freq": self.high_freq, "dither": 0.0, "snip_edges": True,
                "cmvn": self.cmvn, "cmvn_eps": self.cmvn_eps, "cmvn_std": "unbiased"}

    # ---------------------------------------------------------------------------- checkpoints
    def load_checkpoint(self, path: str | Path) -> None:
        """Load s3prl's published APC checkpoint, or avbench's format / a bare state dict.

        s3prl (upstream/apc/expert.py): `{"config": {"data": {"audio": {...}}, "model": {"paras":
        {num_layers, hidden_size, dropout, residual}}, ...}, "model": state_dict, ...}`. Its config
        must describe this encoder: any difference (layers, width, residual, feature options) is a
        ConfigError naming the field and the kwarg to pass, before the state dict is checked key by
        key; a different dropout or a nonzero dither only logs a warning (neither changes weights or
        inference features).
        """
        path = Path(path)
        ckpt = load_published_checkpoint(path, "an APC checkpoint")
        if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and "model" in ckpt:
            self._check_s3prl_config(ckpt["config"], path)
            state = ckpt["model"]
            if not isinstance(state, dict):
                raise ConfigError(f"{path}: 'model' should be a state dict, got {type(state).__name__}")
            load_state_exactly(self, dict(state), source=path,
                               hint="The checkpoint's config matched this encoder, so its weights contradict "
                                    "its own config.")
            return
        super().load_checkpoint(path)

    def _check_s3prl_config(self, config: dict, path: Path) -> None:
        def fail(field: str, theirs: Any, ours: Any, kwarg: str | None = None) -> None:
            how = _kwargs_hint(kwarg, theirs) if kwarg else "this encoder does not implement it"
            raise ConfigError(f"{path}: config field {field} = {theirs!r} but the encoder has {ours!r}; {how}.")

        try:
            paras = config["model"]["paras"]
            audio = config["data"]["audio"]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: an s3prl APC checkpoint needs config.model.paras and config.data.audio "
                              f"(missing {exc})") from exc
        if not isinstance(paras, dict) or not isinstance(audio, dict):
            raise ConfigError(f"{path}: config.model.paras and config.data.audio must be dicts")
        ours = {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "dropout": self.dropout,
                "residual": self.rnn_residual}
        for field in _PARAS:
            if field not in paras:
                raise ConfigError(f"{path}: config.model.paras has no {field!r} (s3prl's APC requires "
                                  f"{', '.join(_PARAS)})")
            if field == "dropout":  # a training setting, not architecture: the weights fit either way
                if paras[field] != ours[field]:
                    log.warning("%s: trained with dropout %s; the encoder uses dropout %s (it only acts in "
                                "training mode)", path, paras[field], ours[field])
                continue
            if paras[field] != ours[field]:
                fail(f"config.model.paras.{field}", paras[field], ours[field], field)
        if paras.get("vq") is not None:
            raise ConfigError(f"{path}: config.model.paras.vq is set: this is a VQ-APC checkpoint, and the 'apc' "
                              "encoder implements plain APC only.")
        unknown = sorted(set(paras) - set(_PARAS) - {"vq"})
        if unknown:
            raise ConfigError(f"{path}: unknown config.model.paras field(s) {unknown}; s3prl's APC takes "
                              f"{', '.join(_PARAS)} (and vq)")

        audio = dict(audio)
        feat_type = audio.pop("feat_type", None)
        if feat_type != "fbank":
            raise ConfigError(f"{path}: config.data.audio.feat_type = {feat_type!r}; s3prl's APC front end and "
                              "this encoder only compute 'fbank'.")
        feat_dim = audio.pop("feat_dim", None)
        if feat_dim != self.input_size:
            fail("config.data.audio.feat_dim", feat_dim, self.input_size, "input_size")
        cmvn = audio.pop("cmvn", True)  # s3prl's create_transform default
        if bool(cmvn) != self.cmvn:
            fail("config.data.audio.cmvn", bool(cmvn), self.cmvn, "cmvn")
        audio.pop("decode_wav", None)  # how s3prl read files; no effect on features
        if self.window_type != "hamming":  # s3prl passes window_type="hamming" itself
            raise ConfigError(f"{path}: s3prl's APC features use a Hamming window, but the encoder has "
                              f"window_type={self.window_type!r}; {_kwargs_hint('window_type', 'hamming')}.")
        ours_fbank = {"frame_length": self.frame_length, "frame_shift": self.frame_shift,
                      "preemphasis_coefficient": self.preemphasis_coefficient,
                      "remove_dc_offset": self.remove_dc_offset, "round_to_power_of_two": self.round_to_power_of_two,
                      "low_freq": self.low_freq, "high_freq": self.high_freq}
        unknown = sorted(set(audio) - set(_FBANK_DEFAULTS) - _FBANK_IRRELEVANT)
        if unknown:
            raise ConfigError(f"{path}: config.data.audio has option(s) {unknown} that this encoder does not "
                              f"implement; it understands {', '.join(sorted(_FBANK_DEFAULTS))}.")
        for key, default in _FBANK_DEFAULTS.items():
            theirs = audio.get(key, default)
            if key == "dither":
                if theirs:
                    log.warning("%s: the checkpoint's features were dithered (dither=%s); avbench computes them "
                                "without dither (deterministic), which is what s3prl's dither only perturbs.",
                                path, theirs)
                continue
            if key in _FBANK_FIXED:
                if theirs != default:
                    fail(f"config.data.audio.{key}", theirs, default)
                continue
            if theirs != ours_fbank[key]:
                fail(f"config.data.audio.{key}", theirs, ours_fbank[key], key)


# --------------------------------------------------------------------------------- pretext
class APCPretext(Pretext):
    """Predict the fbank frame n_ahead steps ahead from the last layer's hidden state (L1).

    The target is the encoder's own input (fbank after CMVN), so nothing here is learnable but the
    encoder and its postnet. The loss is the mean absolute error over the valid (t, bin) pairs,
    t < frames - n_ahead, of every clip in the batch.
    """

    def __init__(self, encoder: APC, n_ahead: int = 3) -> None:
        super().__init__()
        if not isinstance(encoder, APC):
            raise ConfigError(f"the apc pretext trains an APC encoder, got {type(encoder).__name__}")
        if int(n_ahead) != n_ahead or n_ahead < 1:
            raise ConfigError(f"apc pretext: n_ahead must be a positive integer, got {n_ahead}")
        self.encoder = encoder
        self.n_ahead = int(n_ahead)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor, info=None) -> dict[str, torch.Tensor]:
        feats, frames = self.encoder.features(wav, lengths)
        n = self.n_ahead
        if feats.shape[1] <= n or int((frames - n).clamp(min=0).sum()) == 0:
            raise ConfigError(f"apc pretext: every clip has at most {int(frames.max())} frames, no more than "
                              f"n_ahead={n}; train on longer crops.")
        target = feats[:, n:].detach()
        hidden = self.encoder.encode_features(feats, frames)[-1]
        predicted = self.encoder.postnet(hidden[:, :-n])
        valid = (torch.arange(feats.shape[1] - n, device=feats.device) < (frames - n)[:, None]).to(feats.dtype)
        error = (predicted - target).abs().sum(-1) * valid  # [B, T - n]
        count = valid.sum()
        loss = error.sum() / (count * feats.shape[-1])
        return {"loss": loss, "valid_frames": count.detach()}

    def config(self) -> dict:
        return {"objective": "apc", "n_ahead": self.n_ahead, "loss": "l1", "target": "input fbank (after CMVN)",
                "predictor": "postnet on the last layer"}


@register_pretext("apc")
def apc_pretext(encoder: APC, context: PretextContext | None = None, n_ahead: int = 3) -> APCPretext:
    """The APC objective for `encoder` (context unused: APC draws no random numbers besides dropout)."""
    return APCPretext(encoder, n_ahead=n_ahead)
