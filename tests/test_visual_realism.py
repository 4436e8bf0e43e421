"""Generator version 4: speakers articulate differently, frames are filmed, lip reading is measured."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.data.corpus import speakers as speakers_module
from bench.data.corpus.articulation import ArticulationStyle, speaker_track
from bench.data.corpus.camera import h264_roundtrip, render_camera_frames
from bench.data.corpus.embedded import EmbeddedCorpus
from bench.data.corpus.lipreading import (NEAREST_LOOKALIKES, lookalikes, motion_frames, train_reader, viseme_sequence,
                                          word_visemes)
from bench.data.corpus.mouth import FaceIdentity, render_frames
from bench.data.corpus.speakers import make_speakers
from bench.data.corpus.visemes import articulation_track

WORD_ONE = [("w", 0.30, 0.38, 1.0), ("ʌ", 0.38, 0.55, 1.15), ("n", 0.55, 0.65, 1.0)]  # "one"
WORD_MOO = [("m", 0.30, 0.42, 1.0), ("uː", 0.42, 0.70, 1.15)]


def _peak_time(track: np.ndarray, channel: int = 0) -> float:
    return float(np.argmax(track[:, channel]))


def test_styles_come_from_their_own_stream_so_voices_and_faces_are_version_3s():
    styled = make_speakers(12, seed=0)
    plain = speakers_module._espeak_speakers(12, seed=0)
    assert [replace(s, articulation=ArticulationStyle()) for s in styled] == plain
    gains = {round(s.articulation.gain, 3) for s in styled}
    assert len(gains) == 12, "every speaker draws their own articulation"
    row = styled[0].to_row()
    assert ArticulationStyle.from_dict(row) == ArticulationStyle(**{k: round(v, 6) for k, v in
                                                                   vars(styled[0].articulation).items()})


def test_a_version_3_speaker_row_reads_as_the_neutral_style():
    assert ArticulationStyle.from_dict({"speaker": "spk000", "face_skin_tone": 0.5}) == ArticulationStyle()


def test_speaker_track_follows_the_style():
    rng = lambda: np.random.default_rng(3)  # noqa: E731 - the same clip draws for each style
    still = dict(motor_noise=0.0, visual_lead_s=0.0)
    base, clip = speaker_track(WORD_ONE, 1.0, ArticulationStyle(**still), rng(), rate_wpm=170)
    # the neutral style without noise is the version 3 track moved by the clip's offset, up to its
    # +-10% excursion jitter
    v3 = articulation_track([(p, a - clip.offset_s, b - clip.offset_s, g) for p, a, b, g in WORD_ONE], 1.0)
    assert np.corrcoef(base[:, 0], v3[:, 0])[0, 1] > 0.99 and 0.9 <= base[:, 0].max() / v3[:, 0].max() <= 1.1
    hypo, _ = speaker_track(WORD_ONE, 1.0, ArticulationStyle(gain=0.6, **still), rng(), rate_wpm=170)
    hyper, _ = speaker_track(WORD_ONE, 1.0, ArticulationStyle(gain=1.3, **still), rng(), rate_wpm=170)
    assert np.ptp(hypo[:, 0]) < 0.7 * np.ptp(hyper[:, 0])
    fast, _ = speaker_track(WORD_ONE, 1.0, ArticulationStyle(**still), rng(), rate_wpm=230)
    assert fast[:, 0].max() < base[:, 0].max(), "faster than habit: the gestures undershoot"
    spread, _ = speaker_track(WORD_ONE, 1.0, ArticulationStyle(spread_bias=0.1, **still), rng(), rate_wpm=170)
    assert (spread[8:16, 1] > base[8:16, 1]).all()  # while the word is said


def test_the_mouth_leads_the_sound_by_the_clip_offset_and_rounds_ahead_of_the_vowel():
    lead = ArticulationStyle(visual_lead_s=0.08, motor_noise=0.0)
    track, clip = speaker_track(WORD_ONE, 1.0, lead, np.random.default_rng(0), rate_wpm=170)
    assert 0.02 < clip.offset_s <= 0.12
    plain, _ = speaker_track(WORD_ONE, 1.0, ArticulationStyle(), np.random.default_rng(0), rate_wpm=170)
    assert _peak_time(track) < _peak_time(plain)
    early = ArticulationStyle(anticipation_s=0.15)
    anticipating, _ = speaker_track(WORD_MOO, 1.0, early, np.random.default_rng(0), rate_wpm=170)
    plain, _ = speaker_track(WORD_MOO, 1.0, ArticulationStyle(), np.random.default_rng(0), rate_wpm=170)
    # during the /m/ (frames 8-10) the lips are already rounding for the /u/
    assert anticipating[8:10, 2].mean() > plain[8:10, 2].mean() + 0.1


def test_motor_noise_makes_renditions_differ_and_is_small_at_rest():
    style = ArticulationStyle(motor_noise=0.05)
    a, _ = speaker_track(WORD_ONE, 1.0, style, np.random.default_rng(1), rate_wpm=170)
    b, _ = speaker_track(WORD_ONE, 1.0, style, np.random.default_rng(2), rate_wpm=170)
    assert np.abs(a - b)[8:16].mean() > 0.01
    assert np.abs(a - b)[:3].mean() < np.abs(a - b)[8:16].mean()


def test_camera_frames_are_deterministic_filmed_and_coded():
    track = articulation_track([("m", 0.2, 0.4), ("ɑː", 0.4, 0.7), ("p", 0.7, 0.8)], 1.0)
    face = FaceIdentity()
    a = render_camera_frames(track, face, clip_seed=7, texture_seed=1)
    assert a.shape == (25, 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, render_camera_frames(track, face, clip_seed=7, texture_seed=1))
    other_clip = render_camera_frames(track, face, clip_seed=8, texture_seed=1)
    assert np.abs(a.astype(int) - other_clip).mean() > 3, "lighting and pose change with the clip"
    raw = render_camera_frames(track, face, clip_seed=7, texture_seed=1, codec=False)
    error = np.abs(a.astype(int) - raw)
    assert 0 < error.mean() < 8, "H.264 changes the pixels, a little"
    # the open mouth (frame 14) is darker in the middle than the closed one (frame 2)
    centre = (slice(20, 44), slice(16, 48))
    assert raw[14][centre].min() < raw[2][centre].min() - 40
    # the head moves: the rest frames at the start and end of the clip are not the same picture
    assert np.abs(raw[0].astype(int) - raw[24]).mean() > 1


def test_h264_roundtrip_keeps_odd_sizes_and_frame_count():
    frames = np.random.default_rng(0).integers(0, 255, size=(5, 33, 31), dtype=np.uint8)
    out = h264_roundtrip(frames, crf=20)
    assert out.shape == frames.shape


def test_version_3_corpora_keep_their_cartoon_frames(small_corpus):
    # Checkpoints pretrained on a version 3 corpus saw cartoon frames; its frames must stay those.
    meta = dict(small_corpus.manifest.meta, generator_version=3)
    old = EmbeddedCorpus(path=small_corpus.path, manifest=replace(small_corpus.manifest, meta=meta),
                         speakers=small_corpus.speakers)
    clip_id, speaker = small_corpus.manifest.table.iloc[0][["clip_id", "speaker"]]
    assert not old.camera_frames and small_corpus.camera_frames
    seed = int(hashlib.sha256(clip_id.encode()).hexdigest()[:8], 16)
    cartoon = render_frames(small_corpus.track(clip_id), small_corpus.face(speaker), jitter_seed=seed)
    assert np.array_equal(old.frames(clip_id), cartoon)
    assert not np.array_equal(small_corpus.frames(clip_id), cartoon)
    assert np.array_equal(old.identity_frame(speaker),
                          render_frames(np.asarray([[0.02, 0.45, 0.15]]), small_corpus.face(speaker))[0])


def test_tracks_of_one_word_differ_between_speakers(small_corpus):
    # Version 3 spread every speaker's lips alike: the widest point of "yes" varied by 0.0015 (sd
    # over 20 speakers of the default corpus) and the roundest of "two" by 0.042. Version 4: 0.079, 0.156.
    t = small_corpus.manifest.table
    widest = [small_corpus.track(c)[:, 1].max() for c in t.loc[t["label"] == "yes", "clip_id"]]
    roundest = [small_corpus.track(c)[:, 2].max() for c in t.loc[t["label"] == "two", "clip_id"]]
    assert np.std(widest) > 0.03 and np.std(roundest) > 0.08


def test_viseme_sequences_merge_words_that_look_alike():
    assert viseme_sequence("n ˈoʊ") == viseme_sequence("ɡ ˈoʊ") == viseme_sequence("t ˈuː")
    assert viseme_sequence("b ˈɛ d") != viseme_sequence("m ˈæ d")
    near = lookalikes({"no": "Tu", "go": "Tu", "two": "Tu", "bed": "BiT", "pet": "BiT", "wow": "Wau"})
    assert near["no"] == {"go", "two", "wow"} and "pet" in near["bed"]  # wow: Wau is 2 edits from Tu
    assert NEAREST_LOOKALIKES == 3


def test_word_visemes_take_each_words_commonest_sequence(small_corpus):
    visemes = word_visemes(small_corpus.manifest.table)
    assert len(visemes) == 30 and visemes["no"] == visemes["go"]
    assert visemes["bed"].startswith("B") and visemes["five"].startswith("F")


def test_the_word_reader_learns_separable_sequences_and_keeps_the_best_epoch():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 1, 3, generator=gen) * 2

    ramp = torch.linspace(-1.0, 1.0, 25)[None, :, None]

    def split(n):  # each class moves its three features its own way over the clip
        y = torch.arange(n) % 4
        return centres[y] * ramp + 0.3 * torch.randn(n, 25, 3, generator=gen), y

    x, y = {}, {}
    for name, n in (("train", 64), ("valid", 16), ("test", 16)):
        x[name], y[name] = split(n)
    _, epoch, accuracy = train_reader(x, y, n_words=4, frames=False, epochs=6)
    assert accuracy == 1.0 and 1 <= epoch <= 6
    # the same sequences drawn as frames: three horizontal bands, one per feature (the reader sees
    # each clip minus its mean frame, so what tells the classes apart must move)
    frames = {k: (v.repeat_interleave(11, dim=-1)[..., :32, None] * 40 + 128).clamp(0, 255).to(torch.uint8)
              .expand(-1, -1, 32, 32).contiguous() for k, v in x.items()}
    _, _, frame_accuracy = train_reader(frames, y, n_words=4, frames=True, epochs=10)
    assert frame_accuracy >= 0.75


@pytest.mark.slow
def test_cli_corpus_check_runs_the_lipreading_check_and_keeps_it(small_corpus, capsys):
    rc = main(["corpus", "check", "small", "--max-clips", "100", "--realism-clips", "0",
               "--lipreading-clips", "96", "--lipreading-epochs", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    for expected in ("lip reading:", "frames ", "tracks ", "audio ", "words with one viseme sequence: ", "go/no"):
        assert expected in out
    kept = json.loads((small_corpus.path / "manifest.json").read_text())["lipreading"]
    assert kept["train_clips"] == 96 and 0.0 <= kept["frames"]["accuracy"] <= 1.0


def test_motion_frames_cancel_the_static_face_and_the_exposure():
    gen = torch.Generator().manual_seed(0)
    face = torch.randint(0, 200, (1, 1, 16, 16), generator=gen).to(torch.float32)
    moving = face + torch.linspace(0, 30, 25)[None, :, None, None] * (torch.arange(16) < 8)[None, None, :, None]
    brighter = 1.3 * moving + 20  # another exposure of the same clip
    assert torch.allclose(motion_frames(moving), motion_frames(brighter), atol=1e-3)
    assert motion_frames(face.expand(1, 25, 16, 16)).abs().max() == 0
