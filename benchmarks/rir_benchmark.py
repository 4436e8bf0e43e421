"""Home-made RIR vs pyroomacoustics image-source rooms: speed and RT60 accuracy.

For N draws of a target rt60 ~ U(0.15, 0.6) s at 16 kHz (the embedded corpus' reverb setting), it times
  * home-made: bench.data.corpus.acoustics.synthetic_rir(rt60, 16000, rng);
  * pra ISM: a pyroomacoustics ShoeBox (random 3-8 x 3-6 x 2.4-3.5 m room, source and mic >= 0.5 m from
    walls) whose absorption and max_order come from pra.inverse_sabine(rt60, room_dim);
  * pra ISM capped: the same room with max_order capped (--cap, default 17);
  * pra hybrid: the same room, max_order 3 image sources plus pyroomacoustics' default ray tracing;
and reports ms per RIR (room construction + compute_rir for pra), the RT60 measured by Schroeder
backward integration (T20: -5..-25 dB and T30: -5..-35 dB fits, extrapolated to 60 dB) against the
target, pra's own experimental.measure_rt60 (decay_db=30) where available, the RIR length, the
direct-path delay, and the ratio of one RIR's generation time to convolving a 1 s clip with it
(scipy.signal.fftconvolve), the cost a corpus build already pays per reverberant clip.

Run (pyroomacoustics lives in its own venv; without it only the home-made RIR is measured):
    OMP_NUM_THREADS=1 taskset -c 1 /tmp/pra-venv/bin/python benchmarks/rir_benchmark.py --draws 40
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.data.corpus.acoustics import synthetic_rir  # noqa: E402

try:
    import pyroomacoustics as pra
except ImportError:
    pra = None

SAMPLE_RATE = 16000
RT60_RANGE = (0.15, 0.6)


def schroeder_rt60(rir: np.ndarray, fs: int, fit_db: tuple[float, float]) -> float:
    """RT60 from a least-squares line over the Schroeder decay curve between fit_db[0] and fit_db[1] dB."""
    energy = np.cumsum(rir[::-1].astype(np.float64) ** 2)[::-1]
    energy = energy[energy > 0]
    edc_db = 10.0 * np.log10(energy / energy[0])
    hi, lo = fit_db
    below_hi = np.nonzero(edc_db <= hi)[0]
    below_lo = np.nonzero(edc_db <= lo)[0]
    if len(below_hi) == 0 or len(below_lo) == 0 or below_lo[0] - below_hi[0] < 2:
        return float("nan")  # the curve never decays far enough for this fit
    idx = np.arange(below_hi[0], below_lo[0])
    slope_db_per_s = np.polyfit(idx / fs, edc_db[idx], 1)[0]
    return -60.0 / slope_db_per_s


def direct_to_reverberant_db(rir: np.ndarray, half_window_s: float = 0.0025) -> float:
    """Energy within +-2.5 ms of the strongest tap over the energy of everything else, in dB."""
    peak, half = int(np.argmax(np.abs(rir))), int(half_window_s * SAMPLE_RATE)
    energy = rir.astype(np.float64) ** 2
    direct = energy[max(peak - half, 0): peak + half + 1].sum()
    return 10.0 * np.log10(direct / max(energy.sum() - direct, 1e-20))


def random_room(rng: np.random.Generator) -> tuple[list[float], list[float], list[float]]:
    """A plausible room and a source and mic position at least 0.5 m from every wall."""
    dim = [rng.uniform(3, 8), rng.uniform(3, 6), rng.uniform(2.4, 3.5)]
    source, mic = ([float(rng.uniform(0.5, d - 0.5)) for d in dim] for _ in range(2))
    return dim, source, mic


def pra_rir(rt60: float, dim, source, mic, mode: str, cap: int) -> np.ndarray:
    """One pyroomacoustics RIR in the given mode: 'ism', 'capped' or 'hybrid'."""
    absorption, max_order = pra.inverse_sabine(rt60, dim)
    order = {"ism": max_order, "capped": min(max_order, cap), "hybrid": 3}[mode]
    room = pra.ShoeBox(dim, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=order,
                       ray_tracing=(mode == "hybrid"), air_absorption=False)
    if mode == "hybrid":
        room.set_ray_tracing()
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=np.float64)


def measure(method: str, make_rir, rt60s: np.ndarray, clip: np.ndarray) -> dict:
    """Time make_rir(i) for every draw, then measure each RIR and the cost of convolving the clip with it."""
    make_rir(0)  # warm-up: first-call imports and allocations are not a per-RIR cost
    rows = []
    for i, target in enumerate(rt60s):
        start = time.perf_counter()
        rir = make_rir(i)
        gen_s = time.perf_counter() - start
        start = time.perf_counter()
        fftconvolve(clip, rir)
        conv_s = time.perf_counter() - start
        pra_rt = (pra.experimental.measure_rt60(rir, SAMPLE_RATE, decay_db=30)
                  if pra is not None and hasattr(pra, "experimental") else np.nan)
        rows.append(dict(gen_s=gen_s, conv_s=conv_s, target=target, len_s=len(rir) / SAMPLE_RATE,
                         peak_ms=1e3 * np.argmax(np.abs(rir)) / SAMPLE_RATE, drr_db=direct_to_reverberant_db(rir),
                         t20=schroeder_rt60(rir, SAMPLE_RATE, (-5, -25)),
                         t30=schroeder_rt60(rir, SAMPLE_RATE, (-5, -35)), pra_t30=pra_rt))
    return {"method": method, **{k: np.array([r[k] for r in rows]) for k in rows[0]}}


def summarise(results: list[dict]) -> None:
    base_ms = np.median(results[0]["gen_s"]) * 1e3
    header = (f"{'method':<18}{'ms med':>9}{'ms p90':>9}{'x home':>9}{'gen/conv':>9}{'len s':>7}"
              f"{'peak ms':>8}{'DRR dB':>7}"
              f"{'T20|err|':>9}{'T20 rel':>8}{'T30|err|':>9}{'T30 rel':>8}{'praT30 rel':>11}{'T30 nan':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        ms = r["gen_s"] * 1e3
        rel = {k: np.nanmedian(np.abs(r[k] - r["target"]) / r["target"]) if np.isfinite(r[k]).any() else np.nan
               for k in ("t20", "t30", "pra_t30")}
        print(f"{r['method']:<18}{np.median(ms):9.3f}{np.percentile(ms, 90):9.3f}{np.median(ms) / base_ms:9.1f}"
              f"{np.median(r['gen_s'] / r['conv_s']):9.2f}{np.median(r['len_s']):7.3f}"
              f"{np.median(r['peak_ms']):8.2f}{np.median(r['drr_db']):7.1f}"
              f"{np.nanmedian(np.abs(r['t20'] - r['target'])):9.3f}{rel['t20']:8.1%}"
              f"{np.nanmedian(np.abs(r['t30'] - r['target'])):9.3f}{rel['t30']:8.1%}{rel['pra_t30']:11.1%}"
              f"{int(np.isnan(r['t30']).sum()):8d}")
    print("\nms: per RIR (pra: room construction + compute_rir). x home: median time / home-made median.")
    print("len s, peak ms (direct-path delay), DRR dB (+-2.5 ms around the peak vs the rest): medians.")
    print("gen/conv: median of (RIR generation time / fftconvolve of a 1 s clip with that RIR).")
    print("|err| in s and rel = median |measured - target| (/ target); Schroeder T20/T30 fits, praT30 = "
          "pra.experimental.measure_rt60(decay_db=30). T30 nan: draws whose decay never reached -35 dB.")
    for r in results:
        signed = np.nanmedian((r["t30"] - r["target"]) / r["target"])
        corpus = np.median(r["gen_s"]) * np.array([1200, 10800]) * 0.2
        print(f"  {r['method']:<18} median signed T30 error {signed:+.1%}; RIR time for 20% of a "
              f"1,200 / 10,800-clip corpus: {corpus[0]:.2f} s / {corpus[1]:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=40, help="number of rt60 draws (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=int, default=17, help="max_order cap of the 'capped' setting")
    parser.add_argument("--no-hybrid", action="store_true", help="skip the ISM + ray-tracing setting")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    rt60s = rng.uniform(*RT60_RANGE, size=args.draws)
    rooms = [random_room(rng) for _ in range(args.draws)]
    clip = rng.standard_normal(SAMPLE_RATE)
    rir_rngs = [np.random.default_rng([args.seed, i]) for i in range(args.draws)]

    results = [measure("home-made", lambda i: synthetic_rir(rt60s[i], SAMPLE_RATE, rir_rngs[i]), rt60s, clip)]
    if pra is None:
        print("pyroomacoustics is not importable: measuring the home-made RIR only.\n")
    else:
        print(f"pyroomacoustics {pra.__version__}, numpy {np.__version__}, {args.draws} draws, seed {args.seed}\n")
        modes = [("pra ISM sabine", "ism"), (f"pra ISM order<={args.cap}", "capped")]
        if not args.no_hybrid:
            modes.append(("pra ISM3+raytrace", "hybrid"))
        for label, mode in modes:
            results.append(measure(label, lambda i, m=mode: pra_rir(rt60s[i], *rooms[i], m, args.cap), rt60s, clip))
    summarise(results)


if __name__ == "__main__":
    main()
