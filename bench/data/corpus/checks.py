"""Sanity checks of a built corpus: does the mouth follow the audio, are the words distinct?

These check the data, not any model: `avbench corpus check` prints them, and the tests assert them
on the small corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.data.audio import load_audio
from bench.data.corpus.embedded import EmbeddedCorpus

SAMPLES_PER_VIDEO_FRAME = 640  # 40 ms at 16 kHz: one 25 fps frame


@dataclass
class MouthAudioCorrelation:
    all_frames: float
    speech_frames: float
    n_frames: int
    n_speech_frames: int


def frame_rms(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS energy per 40 ms frame, frame k covering samples [640k, 640(k+1))."""
    wav = np.pad(wav, (0, max(0, n_frames * SAMPLES_PER_VIDEO_FRAME - len(wav))))
    frames = wav[: n_frames * SAMPLES_PER_VIDEO_FRAME].reshape(n_frames, SAMPLES_PER_VIDEO_FRAME)
    return np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))


def mouth_audio_correlation(corpus: EmbeddedCorpus, max_clips: int | None = None, seed: int = 0) -> MouthAudioCorrelation:
    """Pearson r between per-frame RMS energy and mouth opening, over all frames and speech frames.

    Speech frames are those whose centre lies inside the clip's speech span (manifest start/end).
    """
    table = corpus.manifest.table
    if max_clips is not None and len(table) > max_clips:
        table = table.sample(n=max_clips, random_state=seed)
    energy, opening, speech = [], [], []
    for row in table.itertuples(index=False):
        track = np.load(corpus.manifest.resolve(row.mouth_track))
        wav = load_audio(corpus.manifest.resolve(row.audio_path))
        energy.append(frame_rms(wav, len(track)))
        opening.append(track[:, 0])
        centres = (np.arange(len(track)) + 0.5) / 25.0
        speech.append((centres >= row.start) & (centres < row.end))
    e, o, s = np.concatenate(energy), np.concatenate(opening), np.concatenate(speech)
    return MouthAudioCorrelation(all_frames=float(np.corrcoef(e, o)[0, 1]),
                                 speech_frames=float(np.corrcoef(e[s], o[s])[0, 1]),
                                 n_frames=int(len(e)), n_speech_frames=int(s.sum()))


def nearest_centroid_accuracy(corpus: EmbeddedCorpus, n_mfcc: int = 13, speech_only: bool = False) -> float:
    """Train-speaker word centroids of mean MFCCs, scored on test speakers (chance = 1/words).

    With `speech_only` the mean is over the speech span only, not the whole noisy clip.
    """
    import librosa

    table = corpus.manifest.table
    feats = {}
    for row in table[table["split"].isin(["train", "test"])].itertuples(index=False):
        wav = load_audio(corpus.manifest.resolve(row.audio_path))
        if speech_only:
            wav = wav[int(row.start * 16000): max(int(row.end * 16000), int(row.start * 16000) + 400)]
        mfcc = librosa.feature.mfcc(y=wav, sr=16000, n_mfcc=n_mfcc, n_fft=400, hop_length=160)
        feats[row.clip_id] = mfcc.mean(axis=1)
    train = table[table["split"] == "train"]
    test = table[table["split"] == "test"]
    x_train = np.stack([feats[c] for c in train["clip_id"]])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    labels = sorted(train["label"].unique())
    centroids = np.stack([((np.stack([feats[c] for c in train.loc[train["label"] == w, "clip_id"]]) - mean) / std).mean(0)
                          for w in labels])
    x_test = (np.stack([feats[c] for c in test["clip_id"]]) - mean) / std
    pred = np.asarray(labels)[np.argmin(((x_test[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
    return float((pred == test["label"].to_numpy()).mean())
