"""Parity with s3prl's own code: avbench's APC, Kaldi fbank and wav2vec against s3prl 0.4.18.

Runs only where s3prl imports: `tox -e s3prl` (torch 2.8, torchaudio 2.8, s3prl 0.4.18; see
tox.ini and baselines/s3prl_adapter.py for why that is a separate environment). In the core
environment the whole module is skipped.

Each test builds s3prl's model with seeded random weights in the published configuration, saves
it in the published checkpoint layout to tmp_path, loads that file into avbench's encoder through
`create_encoder(name, checkpoint=...)` (the user's path), and compares outputs on the same input.
Every comparison records its max abs difference (shown in the terminal summary by conftest.py).

Tolerances (observed values on x86-64, torch 2.8 CPU, in brackets):
- same input, same arithmetic: 1e-5 (APC's GRU stack on s3prl's own features [1e-7]; wav2vec
  per clip [0.0, bit-exact]; wav2vec through s3prl's hub with its converted format [0.0]);
- wav2vec in a padded batch: 1e-5 x max|c| (avbench's masked group norm sums in another order
  [1e-5 abs on values up to ~4]);
- Kaldi fbank: 5e-4 on log energies [1.5e-4]. torchaudio builds its mel filterbank in float32 and
  avbench in float64; the small weights at a triangle's edge differ by up to 1e-3 relative [banks:
  1.4e-5 abs]. That is all of the difference beyond float32 roundoff: measured as band energy
  relative to the frame's strongest band, avbench's fbank is within 5e-5 [1.2e-5], and with
  torchaudio's banks passed in within 2e-6 [3.7e-7] (the log of a band ~70 dB below the peak still
  moves by ~1e-4 from roundoff alone). After CMVN: 2e-4 [1e-4];
- APC end to end from the waveform: 2e-5 [5e-6] with avbench's own banks, 1e-5 [2e-6] with
  torchaudio's.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from pathlib import Path

import pytest

pytest.importorskip("s3prl")
pytest.importorskip("torchaudio")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from s3prl.upstream.apc.apc import APC as S3prlAPC  # noqa: E402
from s3prl.upstream.apc.hubconf import apc_local  # noqa: E402
from s3prl.upstream.wav2vec.hubconf import wav2vec_local  # noqa: E402
from s3prl.upstream.wav2vec.wav2vec_model import Wav2VecConfig, Wav2VecModel  # noqa: E402
from torch.nn.utils.rnn import pad_sequence  # noqa: E402
from torchaudio.compliance import kaldi as ta_kaldi  # noqa: E402

from baselines import kaldi  # noqa: E402
from baselines import s3prl_adapter  # noqa: E402,F401  (registers s3prl:<variant>)
from baselines import apc as _apc, wav2vec as _wav2vec  # noqa: E402,F401  (register apc, wav2vec*)
from bench.errors import ConfigError  # noqa: E402
from bench.registry import count_parameters, create_encoder  # noqa: E402

SR = 16_000
SAME = 1e-5
# s3prl's pretrain/apc config_model.yaml, as its pretrain expert stores it under "config".
APC_CONFIG = {"model": {"paras": {"num_layers": 3, "hidden_size": 512, "dropout": 0.1, "residual": True}},
              "task": {"sequence_length": 1500, "n_future": 5},
              "data": {"audio": {"feat_type": "fbank", "feat_dim": 80, "frame_length": 25, "frame_shift": 10,
                                 "decode_wav": False, "cmvn": True}}}


def speech_like(n: int, seed: int) -> torch.Tensor:
    """A voiced-ish clip: harmonics of a gliding pitch plus noise, so every mel band has energy."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64) / SR
    f0 = 120 + 40 * torch.sin(2 * math.pi * 1.5 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    x = sum(torch.sin(k * phase) / k for k in range(1, 12)) * 0.2
    return (x + 0.02 * torch.randn(n, generator=g, dtype=torch.float64)).float()


CLIPS = (16000, 9001, 4000, 401)


def batch_of(lengths) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    clips = [speech_like(n, i) for i, n in enumerate(lengths)]
    return clips, pad_sequence(clips, batch_first=True), torch.tensor(lengths)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a - b).abs().max().item() if a.numel() else 0.0


def report(record_property, key: str, value: float) -> float:
    record_property(f"max_abs_diff {key}", f"{value:.3g}")
    print(f"max abs diff {key}: {value:.3g}")
    return value


def torchaudio_banks(num_bins: int = 80, n_fft: int = 512) -> torch.Tensor:
    banks, _ = ta_kaldi.get_mel_banks(num_bins, n_fft, float(SR), 20.0, 0.0, 100.0, -500.0, 1.0)
    return F.pad(banks, (0, 1))  # torchaudio.fbank pads the Nyquist column with 0 likewise


# ------------------------------------------------------------------------------------- APC


def s3prl_apc(seed: int = 0) -> S3prlAPC:
    torch.manual_seed(seed)
    paras = APC_CONFIG["model"]["paras"]
    return S3prlAPC(APC_CONFIG["data"]["audio"]["feat_dim"], paras["hidden_size"], paras["num_layers"],
                    paras["dropout"], paras["residual"]).eval()


def save_s3prl_apc(path: Path, model: S3prlAPC) -> Path:
    """The layout of s3prl's pretrain runner + APC pretrain expert (pretrain/runner.py,
    pretrain/apc/pretrain_expert.py add_state_to_save), with an argparse `Args` as it saves."""
    torch.save({"Optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": list(range(14))}]},
                "Step": 100000, "Args": argparse.Namespace(upstream="apc", seed=1337),
                "Config": {"runner": {"total_steps": 100000}},
                "config": APC_CONFIG, "model": model.state_dict(), "Upstream_Config": APC_CONFIG}, path)
    return path


def s3prl_apc_upstream(path: Path):
    """s3prl's own hub entry. Under torch 2.8 its torch.load is weights_only, so the argparse
    `Args` of a real checkpoint needs allowing (the adapter does the same)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return apc_local(str(path)).eval()


def test_kaldi_fbank_matches_torchaudio(record_property):
    clips, wav, lengths = batch_of(CLIPS + (400,))
    ours, frames = kaldi.fbank(wav, lengths, num_mel_bins=80, frame_length=25, frame_shift=10,
                               window_type="hamming")
    with_ta_banks, _ = kaldi.fbank(wav, lengths, num_mel_bins=80, window_type="hamming", banks=torchaudio_banks())

    def energy_error(log_ours: torch.Tensor, log_ref: torch.Tensor) -> float:
        """Band energy error relative to the frame's strongest band (float32 roundoff is relative to it)."""
        ours64, ref64 = log_ours.double().exp(), log_ref.double().exp()
        return ((ours64 - ref64).abs() / ref64.max(dim=1, keepdim=True).values).max().item()

    diff = energy = exact = 0.0
    for i, clip in enumerate(clips):
        # What s3prl's APC FeatureExtractor calls, with the options of APC_CONFIG.
        ref = ta_kaldi.fbank(clip[None], num_mel_bins=80, sample_frequency=SR, window_type="hamming",
                             frame_length=25, frame_shift=10)
        assert ref.shape[0] == int(frames[i])
        diff = max(diff, max_abs(ours[i, : ref.shape[0]], ref))
        energy = max(energy, energy_error(ours[i, : ref.shape[0]], ref))
        exact = max(exact, energy_error(with_ta_banks[i, : ref.shape[0]], ref))
    banks = max_abs(kaldi.mel_banks(80, 512, float(SR), 20.0, 0.0).float(), torchaudio_banks())
    assert report(record_property, "fbank mel banks (avbench float64 vs torchaudio float32)", banks) < 5e-5
    assert report(record_property, "log fbank", diff) < 5e-4
    assert report(record_property, "fbank energy / frame's peak band", energy) < 5e-5
    assert report(record_property, "fbank energy / frame's peak band, torchaudio's banks", exact) < 2e-6


def test_apc_front_end_matches_s3prl_preprocessor(tmp_path, record_property):
    path = save_s3prl_apc(tmp_path / "apc.ckpt", s3prl_apc())
    upstream = s3prl_apc_upstream(path)
    enc = create_encoder("apc", checkpoint=path).eval()
    clips, wav, lengths = batch_of(CLIPS)
    feats, frames = enc.features(wav, lengths)
    diff = 0.0
    for i, clip in enumerate(clips):
        ref = upstream.preprocessor(clip[None])  # fbank + s3prl's per-utterance CMVN
        diff = max(diff, max_abs(feats[i, : int(frames[i])], ref))
    assert report(record_property, "APC fbank+CMVN", diff) < 2e-4


def test_apc_gru_stack_matches_s3prl_on_the_same_features(tmp_path, record_property):
    model = s3prl_apc()
    assert count_parameters(model) == 4_105_296
    path = save_s3prl_apc(tmp_path / "apc.ckpt", model)
    upstream = s3prl_apc_upstream(path)
    enc = create_encoder("apc", checkpoint=path).eval()
    clips, _, _ = batch_of(CLIPS)
    with torch.no_grad():
        feats = [upstream.preprocessor(c[None]) for c in clips]
        frames = torch.tensor([len(f) for f in feats])
        padded = pad_sequence(feats, batch_first=True)
        _, last = model(padded, frames, testing=True)
        ours = enc.encode_features(padded, frames)
    diff = max(max_abs(ours[-1][i, :n], last[i, :n]) for i, n in enumerate(frames.tolist()))
    assert report(record_property, "APC GRU stack (last layer, s3prl's features)", diff) < SAME
    assert not ours[-1][1, int(frames[1]):].any()


@pytest.mark.parametrize("banks", ["avbench", "torchaudio"])
def test_apc_end_to_end_matches_s3prl_upstream(tmp_path, record_property, banks):
    path = save_s3prl_apc(tmp_path / "apc.ckpt", s3prl_apc())
    upstream = s3prl_apc_upstream(path)
    enc = create_encoder("apc", checkpoint=path).eval()
    if banks == "torchaudio":
        enc.mel_banks = torchaudio_banks()
    clips, wav, lengths = batch_of(CLIPS)
    with torch.no_grad():
        theirs = upstream(clips)["hidden_states"]  # s3prl: each layer's output, the last = features
        feats, frames = enc.features(wav, lengths)
        ours = enc.encode_features(feats, frames)
        final, out_lengths = enc(wav, lengths)
    assert len(theirs) == len(ours) == 3 and torch.equal(out_lengths, frames)
    torch.testing.assert_close(final, ours[-1], rtol=0, atol=0)
    diffs = [max(max_abs(ours[layer][i, :n], theirs[layer][i, :n]) for i, n in enumerate(frames.tolist()))
             for layer in range(3)]
    for layer, diff in enumerate(diffs):
        report(record_property, f"APC layer {layer} from the waveform ({banks} banks)", diff)
    assert max(diffs) < (2e-5 if banks == "avbench" else SAME)


# ------------------------------------------------------------------------------------ wav2vec

# fairseq's args for the two architectures (wav2vec_large: fairseq's README command; wav2vec:
# base_wav2vec_architecture), as argparse names; everything else at fairseq's defaults.
W2V_COMMON = dict(infonce=False, prediction_steps=12, num_negatives=10, sample_distance=None,
                  cross_sample_negatives=0, offset="auto", activation="relu", residual_scale=0.5, dropout=0.0,
                  dropout_features=0.0, dropout_agg=0.0, agg_zero_pad=False, no_conv_bias=False,
                  non_affine_group_norm=False, skip_connections_feat=False, vq_type="none",
                  project_features="none", aggregator="cnn", balanced_classes=False, gru_dim=512)
W2V_ARCHS = {
    "wav2vec": dict(conv_feature_layers="[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3",
                    conv_aggregator_layers="[(512, 3, 1)] * 9", skip_connections_agg=False,
                    log_compression=False),
    "wav2vec_large": dict(conv_feature_layers="[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), "
                                              "(512, 1, 1), (512, 1, 1)]",
                          conv_aggregator_layers="[" + ", ".join(f"(512, {k}, 1)" for k in range(2, 14)) + "]",
                          skip_connections_agg=True, log_compression=True),
}


def s3prl_wav2vec(name: str, seed: int = 0) -> tuple[Wav2VecModel, dict]:
    """s3prl's port of fairseq's Wav2VecModel, random weights, norms included (their 1/0 init
    would hide a swapped key)."""
    cfg = {**W2V_COMMON, **W2V_ARCHS[name]}
    torch.manual_seed(seed)
    model = Wav2VecModel(Wav2VecConfig(**cfg)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model, cfg


def save_fairseq(path: Path, model: Wav2VecModel, cfg: dict) -> Path:
    """fairseq's checkpoint_utils layout (wav2vec_large.pt): argparse args, model, optimizer history."""
    torch.save({"args": argparse.Namespace(arch="wav2vec", task="audio_pretraining", criterion="wav2vec",
                                           sample_rate=SR, **cfg),
                "model": model.state_dict(),
                "optimizer_history": [{"criterion_name": "BinaryCrossEntropyCriterion",
                                       "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": 1.2},
                                       "num_updates": 400000}],
                "extra_state": {"epoch": 1, "val_loss": 1.2}, "last_optimizer_state": None}, path)
    return path


def save_s3prl_converted(path: Path, model: Wav2VecModel, cfg: dict) -> Path:
    """s3prl's upstream/wav2vec/convert.py output (the format of its hosted converted checkpoints)."""
    torch.save({"task_cfg": {"_name": "audio_pretraining", "sample_rate": SR, "normalize": False,
                             "enable_padding": False, "max_sample_size": 150000, "min_sample_size": None},
                "model_cfg": {"_name": "wav2vec", **cfg}, "model_weight": model.state_dict()}, path)
    return path


def s3prl_c(model: Wav2VecModel, clip: torch.Tensor) -> torch.Tensor:
    """The context output c [T', D] for one clip, as s3prl's wav2vec expert computes it."""
    z = model.feature_extractor(clip[None])
    return model.feature_aggregator(model.dropout_feats(z)).transpose(1, 2)[0]


@pytest.mark.parametrize("name", ["wav2vec", "wav2vec_large"])
def test_wav2vec_matches_s3prl_from_the_fairseq_checkpoint(tmp_path, record_property, name):
    model, cfg = s3prl_wav2vec(name)
    path = save_fairseq(tmp_path / f"{name}.pt", model, cfg)
    enc = create_encoder(name, checkpoint=path).eval()
    lengths = (8000, 5001, 466)
    clips, wav, lens = batch_of(lengths)
    with torch.no_grad():
        refs = [s3prl_c(model, c) for c in clips]
        alone = [enc(c[None], torch.tensor([c.numel()]))[0][0] for c in clips]
        batch, frames = enc(wav, lens)
    assert [r.shape[0] for r in refs] == frames.tolist() == [48, 29, 1]
    single = max(max_abs(a, r) for a, r in zip(alone, refs))
    padded = max(max_abs(batch[i, : r.shape[0]], r) for i, r in enumerate(refs))
    scale = max(r.abs().max().item() for r in refs)
    assert report(record_property, f"{name} c, one clip", single) < SAME
    assert report(record_property, f"{name} c, padded batch", padded) < SAME * max(1.0, scale)


@pytest.mark.parametrize("name", ["wav2vec", "wav2vec_large"])
def test_wav2vec_matches_s3prl_hub_on_its_converted_checkpoint(tmp_path, record_property, name):
    model, cfg = s3prl_wav2vec(name, seed=1)
    path = save_s3prl_converted(tmp_path / f"{name}_converted.pt", model, cfg)
    upstream = wav2vec_local(str(path)).eval()  # s3prl's own loader (load_converted_model)
    enc = create_encoder(name, checkpoint=path).eval()
    clip = speech_like(6000, 7)
    with torch.no_grad():
        result = upstream([clip])
        ours, frames = enc(clip[None], torch.tensor([6000]))
    assert torch.equal(result["hidden_states"][-1], result["c"])
    diff = max_abs(ours[0], result["c"][0])
    assert report(record_property, f"{name} c via s3prl hub (converted format)", diff) < SAME


# ------------------------------------------------------------------------- the s3prl adapter


class Foreign:
    """Not a tensor, container, number, string or Namespace: unpickling it could run code."""


def test_adapter_apc_gives_avbench_apc_features(tmp_path, record_property):
    path = save_s3prl_apc(tmp_path / "apc.ckpt", s3prl_apc())
    adapter = create_encoder("s3prl:apc", checkpoint=path).eval()
    ours = create_encoder("apc", checkpoint=path).eval()
    assert (adapter.dim, adapter.frame_rate, adapter.num_layers, adapter.downsample_rate) == (512, 100.0, 3, 160)
    assert count_parameters(adapter) == count_parameters(ours) == 4_105_296
    # At least 800 samples: the adapter zero-pads shorter clips to 50 ms as S3PRLUpstream does, which
    # for APC changes their frames (more of them, and CMVN over them); see below.
    lengths_ = (16000, 9001, 4000, 800)
    clips, wav, lengths = batch_of(lengths_)
    with torch.no_grad():
        theirs, their_lengths = adapter(wav, lengths)
        mine, my_lengths = ours(wav, lengths)
    # s3prl's convention: ceil(n / 160) frames; APC's snip_edges frames are fewer, the rest repeat.
    assert their_lengths.tolist() == [math.ceil(n / 160) for n in lengths_]
    assert my_lengths.tolist() == [1 + (n - 400) // 160 for n in lengths_]
    diff = max(max_abs(theirs[i, :n], mine[i, :n]) for i, n in enumerate(my_lengths.tolist()))
    assert report(record_property, "s3prl:apc vs apc", diff) < 2e-5  # the fbank banks, see the docstring
    for i, (n, m) in enumerate(zip(my_lengths.tolist(), their_lengths.tolist())):
        assert torch.equal(theirs[i, n:m], theirs[i, n - 1:n].expand(m - n, -1))
        assert not theirs[i, m:].any()
    # The same through every route of building it, and any layer.
    same = create_encoder(f"s3prl:apc@{path}").eval()
    with torch.no_grad():
        assert torch.equal(same(wav, lengths)[0], theirs)
        first, _ = create_encoder("s3prl:apc", ckpt=str(path), layer=0).eval()(wav, lengths)
        mine_first, _ = create_encoder("apc", checkpoint=path, layer=0).eval()(wav, lengths)
    assert max(max_abs(first[i, :n], mine_first[i, :n]) for i, n in enumerate(my_lengths.tolist())) < 2e-5
    # A 25 ms clip runs as 50 ms (zero-padded): ceil(401 / 160) = 3 frames, all finite.
    short, short_lengths = adapter(speech_like(401, 3)[None], torch.tensor([401]))
    assert short.shape == (1, 3, 512) and short_lengths.tolist() == [3] and torch.isfinite(short).all()


def test_adapter_wav2vec_gives_avbench_wav2vec_features(tmp_path, record_property):
    model, cfg = s3prl_wav2vec("wav2vec_large", seed=2)
    path = save_s3prl_converted(tmp_path / "wav2vec_large.pt", model, cfg)
    adapter = create_encoder("s3prl:wav2vec", checkpoint=path).eval()
    ours = create_encoder("wav2vec_large", checkpoint=path).eval()
    assert (adapter.dim, adapter.frame_rate, adapter.num_layers) == (512, 100.0, 13)
    clips, wav, lengths = batch_of((7000, 3000))
    with torch.no_grad():
        theirs, their_lengths = adapter(wav, lengths)
        mine, my_lengths = ours(wav, lengths)
        alone = [ours(c[None], torch.tensor([c.numel()]))[0][0] for c in clips]
    assert their_lengths.tolist() == [44, 19]  # ceil(n / 160)
    assert my_lengths.tolist() == [1 + (7000 - 465) // 160, 1 + (3000 - 465) // 160]  # receptive field 465
    # Clip by clip (the adapter's default), s3prl's group norm sees no padding: the same numbers as
    # avbench on each clip alone, and avbench's padded batch within its masked-norm roundoff.
    single = max(max_abs(theirs[i, :n], alone[i]) for i, n in enumerate(my_lengths.tolist()))
    padded = max(max_abs(theirs[i, :n], mine[i, :n]) for i, n in enumerate(my_lengths.tolist()))
    scale = max(a.abs().max().item() for a in alone)
    assert report(record_property, "s3prl:wav2vec vs wav2vec_large, one clip", single) < SAME
    assert report(record_property, "s3prl:wav2vec vs wav2vec_large, padded batch", padded) < SAME * max(1.0, scale)


def test_adapter_refuses_unknown_upstreams_and_unsafe_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match=r"no hub entry .*Upstreams that do: .*apc.*wav2vec"):
        create_encoder("s3prl:no_such_upstream")
    with pytest.raises(ConfigError, match="letters, digits"):
        create_encoder("s3prl:apc;rm")
    path = tmp_path / "evil.ckpt"
    torch.save({"config": APC_CONFIG, "model": OrderedDict(), "extra": Foreign()}, path)
    with pytest.raises(ConfigError, match="refused to load"):
        create_encoder("s3prl:apc", checkpoint=path)
