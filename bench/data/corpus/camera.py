"""Mouth frames that look like a camera's mouth crop (corpora of generator version 4 and later).

The version 3 renderer (bench.data.corpus.mouth.render_frames) drew flat cartoon lips on a grey
face: no lighting, no motion, no compression. Here every clip is filmed:

  the face     skin with a per-speaker texture (pores and blotches that move with the head),
               nasolabial folds, a chin shadow that follows the jaw, shading from above;
  the mouth    lips with a darker upper lip and a highlight on the lower one; a cavity whose
               upper and lower halves open by the speaker's jaw share (jaw talkers drop the lower
               lip); upper teeth, lower teeth that show as the jaw drops, and a tongue at the
               bottom of the cavity when it is open;
  the camera   per clip: exposure and gamma, a light direction and strength, slow flicker; head
               translation, scale and rotation drifting over the clip; Gaussian blur (focus and
               motion); sensor noise; and finally H.264 (libx264 through PyAV, CRF 20-36, one
               thread so the bytes are the same on every machine) encoded and decoded.

Everything a clip draws comes from its seed (the corpus derives it from the clip id), so the same
clip renders to the same bytes on demand and in mouth shards (bench.data.mouth_shards).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from bench.data.corpus.mouth import FaceIdentity, _soft_inside

CRF_RANGE = (20, 36)  # libx264's constant rate factor: 20 near-transparent, 36 visibly blocky


@dataclass(frozen=True)
class Filming:
    """How one clip was filmed: all of it drawn from the clip's seed."""

    exposure: float       # overall gain
    gamma: float
    light_angle: float    # direction the light comes from (radians, image plane)
    light_strength: float
    flicker: np.ndarray   # [T] per-frame gain wobble
    shift: np.ndarray     # [T, 2] head translation, frame units ([-1, 1] spans the frame)
    scale: np.ndarray     # [T]
    rotation: np.ndarray  # [T] radians
    blur_px: float
    noise: float          # sensor noise sd, in [0, 1] intensity
    crf: int

    @classmethod
    def draw(cls, seed: int, n_frames: int) -> "Filming":
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCA3E]))

        def drift(sd_start: float, sd_step: float, shape: tuple[int, ...]) -> np.ndarray:
            # a start position plus a random walk: a head that moves slowly during the word
            return rng.normal(0.0, sd_start, size=shape[1:]) + np.cumsum(rng.normal(0.0, sd_step, size=shape), axis=0)

        return cls(
            exposure=float(rng.uniform(0.75, 1.2)),
            gamma=float(rng.uniform(0.8, 1.25)),
            light_angle=float(rng.uniform(0.0, 2.0 * np.pi)),
            light_strength=float(rng.uniform(0.05, 0.35)),
            flicker=1.0 + rng.normal(0.0, 0.01, size=n_frames),
            shift=drift(0.05, 0.008, (n_frames, 2)),
            scale=1.0 + drift(0.04, 0.004, (n_frames,)),
            rotation=drift(np.deg2rad(4.0), np.deg2rad(0.4), (n_frames,)),
            blur_px=float(rng.uniform(0.4, 1.3)),
            noise=float(rng.uniform(0.004, 0.02)),
            crf=int(rng.integers(CRF_RANGE[0], CRF_RANGE[1] + 1)),
        )

    @classmethod
    def still(cls) -> "Filming":
        """Even light, a centred head, light blur, no codec: the identity still."""
        return cls(exposure=1.0, gamma=1.0, light_angle=np.pi / 2, light_strength=0.15, flicker=np.ones(1),
                   shift=np.zeros((1, 2)), scale=np.ones(1), rotation=np.zeros(1), blur_px=0.5, noise=0.0, crf=0)


@lru_cache(maxsize=64)
def _texture_map(seed: int) -> np.ndarray:
    """A speaker's skin as a 96x96 map of brightness offsets over head coordinates [-1.5, 1.5]^2:
    smoothed noise at two scales, blotches (uneven tone) and pores."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5C1A]))
    blotches = gaussian_filter(rng.normal(size=(96, 96)), 6.0, mode="wrap")
    pores = gaussian_filter(rng.normal(size=(96, 96)), 0.8, mode="wrap")
    texture = 0.035 * blotches / (blotches.std() + 1e-9) + 0.015 * pores / (pores.std() + 1e-9)
    texture.setflags(write=False)
    return texture


def _skin_texture(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """The speaker's skin at head coordinates (so it moves with the head), bilinear."""
    scale = (96 - 1) / 3.0
    return map_coordinates(_texture_map(seed), [(v + 1.5) * scale, (u + 1.5) * scale], order=1, mode="nearest")


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) [S, S] of each pixel centre in [-1, 1], shared read-only by every frame of that size."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _head_coordinates(size: int, filming: Filming, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame [T, S, S] coordinates of each pixel in the head's frame (inverse of its pose)."""
    yy, xx = _pixel_grid(size)
    k = np.minimum(np.arange(n_frames), len(filming.scale) - 1)
    cos, sin = np.cos(filming.rotation[k])[:, None, None], np.sin(filming.rotation[k])[:, None, None]
    x = (xx[None] - filming.shift[k, 0, None, None]) / filming.scale[k, None, None]
    y = (yy[None] - filming.shift[k, 1, None, None]) / filming.scale[k, None, None]
    return cos * x + sin * y, -sin * x + cos * y


def _draw(track: np.ndarray, face: FaceIdentity, jaw_share: float, texture_seed: int, filming: Filming,
          size: int) -> np.ndarray:
    """The clip's frames as float intensities [T, S, S], before blur, noise and codec."""
    n = track.shape[0]
    opening, width, rounding = (track[:, c, None, None].astype(np.float64) for c in range(3))
    u, v = _head_coordinates(size, filming, n)
    x, y = u - face.center_x * 2.0, v - face.center_y * 2.0

    half_width = face.lip_width * (0.8 + 0.35 * width - 0.25 * rounding)
    aperture = 0.02 + 0.3 * opening
    # The jaw share splits the aperture: a jaw talker drops the lower lip, a lip talker parts both.
    upper_open, lower_open = aperture * (1.3 - 0.6 * jaw_share), aperture * (0.7 + 0.6 * jaw_share)
    thickness = face.lip_thickness * 2.0 * (1.0 + 0.4 * rounding)
    bow = face.cupid_bow * thickness * np.exp(-(x / (0.25 * half_width)) ** 2)
    upper = y < 0
    outer_height = np.where(upper, upper_open + thickness - bow, lower_open + 1.2 * thickness)
    outer = (x / half_width) ** 2 + (y / outer_height) ** 2
    centre = (lower_open - upper_open) / 2.0
    cavity = (x / (0.82 * half_width)) ** 2 + ((y - centre) / aperture) ** 2
    soft = 12.0 / size
    lips = _soft_inside(outer, soft)
    mouth = _soft_inside(cavity, soft) * np.clip(opening * 6.0, 0.0, 1.0)
    top, bottom = centre - aperture, centre + aperture
    teeth_gaps = 0.92 + 0.08 * np.cos(x * 38.0)
    upper_teeth = mouth * (1.0 / (1.0 + np.exp((y - top - 0.07) / 0.012)))
    # Lower teeth show once the jaw has dropped far enough: more for jaw talkers and spread lips.
    lower_show = np.clip((lower_open - 0.08) * 8.0, 0.0, 1.0) * (0.4 + 0.6 * width)
    lower_teeth = mouth * lower_show / (1.0 + np.exp((bottom - 0.05 - y) / 0.012))
    tongue = mouth * np.clip(opening * 3.0 - 0.6, 0.0, 1.0) * _soft_inside(
        (x / (0.6 * half_width)) ** 2 + ((y - bottom + 0.35 * aperture) / (0.55 * aperture)) ** 2, soft)

    tone = face.skin_tone
    skin = tone * (1.0 - 0.12 * (v + 1.0) / 2.0) + _skin_texture(u, v, texture_seed)
    skin -= 0.08 * np.exp(-((v + 1.0) / 0.25) ** 2)                                   # under the nose
    fold = np.abs(np.abs(x) - (face.lip_width * 1.25 + 0.2 * (y + 0.4)))
    skin -= 0.05 * np.exp(-(fold / 0.05) ** 2) * (np.abs(y) < 0.6)                      # nasolabial folds
    crease = y - bottom - 2.2 * thickness - 0.18 + 0.35 * x ** 2                          # the chin crease,
    skin -= 0.07 * np.exp(-(crease / 0.06) ** 2) * np.exp(-(x / 0.45) ** 2)             # curved, below the lip
    lip_tone = tone - face.lip_darkness
    lip_shade = np.where(upper, lip_tone * 0.88, lip_tone + 0.07 * np.exp(
        -((y - lower_open - 0.5 * thickness) / (0.35 * thickness)) ** 2))
    image = skin * (1 - lips) + lip_shade * lips
    image = image * (1 - mouth) + (0.05 + 0.04 * np.clip(np.abs(x) / half_width, 0, 1)) * mouth
    image = image * (1 - tongue) + 0.38 * tongue
    image = image * (1 - upper_teeth) + 0.86 * teeth_gaps * upper_teeth
    image = image * (1 - lower_teeth) + 0.78 * teeth_gaps * lower_teeth

    yy, xx = _pixel_grid(size)
    light = 1.0 + filming.light_strength * (np.cos(filming.light_angle) * xx + np.sin(filming.light_angle) * -yy)
    flicker = filming.flicker[np.minimum(np.arange(n), len(filming.flicker) - 1), None, None]
    return np.clip(image * light[None] * filming.exposure * flicker, 0.0, 1.0) ** filming.gamma


def h264_roundtrip(frames: np.ndarray, crf: int, fps: int = 25) -> np.ndarray:
    """Encode uint8 [T, H, W] grey frames with libx264 (yuv420p) and decode them back."""
    import av

    t, h, w = frames.shape
    padded = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")  # 4:2:0 needs even sizes
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": "veryfast", "threads": "1"}
        for frame in padded:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    with av.open(buffer, mode="r") as container:
        decoded = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    if len(decoded) != t:
        raise RuntimeError(f"H.264 round trip returned {len(decoded)} frames for {t}")
    return np.stack(decoded)[:, :h, :w]


def render_camera_frames(track: np.ndarray, face: FaceIdentity, *, jaw_share: float = 0.5,
                         texture_seed: int = 0, clip_seed: int = 0, size: int = 64,
                         codec: bool = True) -> np.ndarray:
    """[T, size, size] uint8 frames of a [T, 3] (opening, width, rounding) track, filmed as the clip's
    seed says. `codec=False` skips the H.264 round trip (tests, and to measure what it costs)."""
    track = np.asarray(track, dtype=np.float64)
    if track.ndim != 2 or track.shape[1] != 3:
        raise ValueError(f"track must have shape [T, 3], got {track.shape}")
    filming = Filming.draw(clip_seed, len(track))
    return _film(track, face, jaw_share, texture_seed, filming, size, codec,
                 np.random.default_rng(np.random.SeedSequence([clip_seed, 0x5E45])))


def _film(track, face, jaw_share, texture_seed, filming: Filming, size: int, codec: bool,
          rng: np.random.Generator) -> np.ndarray:
    image = _draw(track, face, jaw_share, texture_seed, filming, size)
    sigma = filming.blur_px * size / 64.0
    image = gaussian_filter(image, sigma=(0.0, sigma, sigma), mode="nearest")
    if filming.noise > 0:
        image = image + rng.normal(0.0, filming.noise, size=image.shape)
    frames = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return h264_roundtrip(frames, filming.crf) if codec and filming.crf > 0 else frames


def camera_identity_frame(face: FaceIdentity, rest: tuple[float, float, float], *, jaw_share: float = 0.5,
                          texture_seed: int = 0, size: int = 64) -> np.ndarray:
    """The speaker's still at rest under even light: the visual pretext's identity input."""
    track = np.asarray([rest], dtype=np.float64)
    return _film(track, face, jaw_share, texture_seed, Filming.still(), size, False, np.random.default_rng(0))[0]
