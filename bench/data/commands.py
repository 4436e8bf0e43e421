"""The data stage's commands: `avbench corpus build|info|check`, `avbench prepare CORPUS PATH`,
`avbench manifest show PATH`. Each imports its module when it runs, so `avbench --help` stays fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_corpus_commands(sub)
    _add_prepare_commands(sub)
    _add_manifest_commands(sub)


def _add_bad_audio(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-bad-audio", choices=("error", "skip"), default="error",
                   help="stop at the first corrupt/empty/silent/NaN file (default), or skip it, "
                        "log it and list it in manifest.json")


def _cmd_corpus_build(args: argparse.Namespace) -> int:
    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.embedded import CorpusConfig, summary_text

    overrides = {k: getattr(args, k) for k in ("speakers", "words", "renditions", "seed", "reverb_prob", "channels")
                 if getattr(args, k) is not None}
    config = CorpusConfig.from_size(args.size, preset=args.engine, **overrides)
    corpus = build_corpus(config, out_root=args.out, workers=args.workers, force=args.force,
                          progress=not args.quiet)
    print(summary_text(corpus))
    return 0


def _cmd_corpus_info(args: argparse.Namespace) -> int:
    from bench.data.corpus.embedded import find_corpus, summary_text

    print(summary_text(find_corpus(args.path)))
    return 0


def _cmd_corpus_check(args: argparse.Namespace) -> int:
    from bench.data.corpus.checks import mouth_audio_correlation, nearest_centroid_accuracy
    from bench.data.corpus.embedded import find_corpus

    corpus = find_corpus(args.path)
    corr = mouth_audio_correlation(corpus, max_clips=args.max_clips)
    words = corpus.manifest.table["label"].nunique()
    print(f"corpus: {corpus.path}")
    print(f"mouth opening vs 40 ms RMS energy, Pearson r: all frames {corr.all_frames:.3f} "
          f"(n={corr.n_frames}), speech frames {corr.speech_frames:.3f} (n={corr.n_speech_frames})")
    print("nearest-centroid word accuracy on mean MFCC-13, train -> test speakers "
          f"(chance {1 / words:.3f}): whole clip {nearest_centroid_accuracy(corpus):.3f}, "
          f"speech span {nearest_centroid_accuracy(corpus, speech_only=True):.3f}")
    if args.realism_clips > 0:
        _realism(corpus, args.realism_clips)
    if args.lipreading_clips > 0:
        _lipreading(corpus, args.lipreading_clips, args.lipreading_epochs)
    return 0


def _keep_in_meta(corpus, key: str, value: dict) -> None:
    """Keep a check's figures in the corpus's manifest.json under `key`; the manifest id hashes
    manifest.csv only, so records and caches of the corpus stay valid."""
    import json

    from bench.data.manifest import META_NAME
    from bench.files import atomic_write_bytes

    meta_path = corpus.path / META_NAME
    meta = json.loads(meta_path.read_text())
    meta[key] = value
    atomic_write_bytes(meta_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    print(f"{key} figures written to {meta_path} (key {key!r})")


def _lipreading(corpus, clips: int, epochs: int) -> None:
    from bench.data.corpus.lipreading import lipreading_check, report_text

    report = lipreading_check(corpus, max_train_clips=clips, epochs=epochs)
    print(report_text(report))
    _keep_in_meta(corpus, "lipreading", report.to_dict())


def _realism(corpus, clips: int) -> None:
    """Print the realism report and keep its figures in the corpus's manifest.json ("realism")."""
    from bench.data.audio import TARGET_SAMPLE_RATE
    from bench.data.corpus.realism import embedded_clean_sample, realism_report, report_text

    report = realism_report(embedded_clean_sample(corpus, clips=clips), sample_rate=TARGET_SAMPLE_RATE)
    print(report_text(report))
    _keep_in_meta(corpus, "realism", report.to_dict())


def _cmd_corpus_frames(args: argparse.Namespace) -> int:
    from bench.data.corpus.contact_sheet import contact_sheet
    from bench.data.corpus.embedded import find_corpus

    print(f"wrote {contact_sheet(find_corpus(args.path), Path(args.out), rows=args.rows)}")
    return 0


def _cmd_corpus_compare(args: argparse.Namespace) -> int:
    """Print the realism figures that `avbench corpus check` kept in each corpus's manifest.json."""
    from bench.data.corpus.embedded import find_corpus
    from bench.data.corpus.realism import comparison_table
    from bench.errors import ConfigError

    reports = {}
    for spec in args.corpora:
        corpus = find_corpus(spec)
        realism = corpus.manifest.meta.get("realism")
        if not realism:
            raise ConfigError(f"{corpus.path / 'manifest.json'} has no realism figures: run `avbench corpus check {spec}`")
        reports[f"{spec} ({corpus.manifest.meta.get('corpus_id')})"] = realism
    print(comparison_table(reports))
    return 0


def _cmd_prepare_spc(args: argparse.Namespace) -> int:
    from bench.data.manifest import read_manifest, summarize
    from bench.data.prepare.spc import prepare_spc

    path = prepare_spc(args.path, out_dir=args.out, on_bad_audio=args.on_bad_audio,
                       progress=not args.quiet)
    print(summarize(read_manifest(path)))
    return 0


def _cmd_prepare_lrw(args: argparse.Namespace) -> int:
    from bench.data.manifest import read_manifest, summarize
    from bench.data.prepare.lrw import prepare_lrw

    path = prepare_lrw(args.path, out_dir=args.out, on_bad_audio=args.on_bad_audio,
                       head_pose=args.head_pose, max_pose_deg=args.max_pose,
                       mouth_crop=args.mouth_crop, progress=not args.quiet)
    manifest = read_manifest(path)
    print(summarize(manifest))
    if args.mouth_shards:
        from bench.data.mouth_shards import write_mouth_shards

        written = write_mouth_shards(manifest, size=args.shard_size, workers=args.shard_workers,
                                     progress=not args.quiet)
        print(f"mouth shards: {written.clips} clips, {written.bytes} bytes ({written.bytes / 2**30:.2f} GiB) "
              f"in {written.seconds:.1f} s, {written.folder}")
    else:
        from bench.data.mouth_shards import MouthShards
        from bench.errors import ConfigError

        try:  # shards of an earlier run with other options would stop the visual pretext: say so now
            MouthShards.open(manifest)
        except ConfigError as exc:
            print(f"warning: {exc}", file=sys.stderr)
    return 0


def _cmd_prepare_speech(args: argparse.Namespace) -> int:
    """voxceleb1, cremad, ravdess, iemocap: the same flow, different preparer and options."""
    import importlib

    from bench.data.manifest import read_manifest, summarize

    module = importlib.import_module(f"bench.data.prepare.{args.corpus}")
    options = {k: getattr(args, k) for k in ("folds", "trials") if getattr(args, k, None) is not None}
    path = getattr(module, f"prepare_{args.corpus}")(args.path, out_dir=args.out, on_bad_audio=args.on_bad_audio,
                                                     progress=not args.quiet, **options)
    print(summarize(read_manifest(path)))
    return 0


def _cmd_manifest_show(args: argparse.Namespace) -> int:
    from bench.data.manifest import read_manifest, summarize

    print(summarize(read_manifest(args.path)))
    return 0



def _add_corpus_commands(sub: argparse._SubParsersAction) -> None:
    corpus = sub.add_parser("corpus", help="the embedded, offline-synthesised audiovisual word corpus")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    build = corpus_sub.add_parser("build", help="synthesise the corpus (reuses an identical build)")
    build.add_argument("--size", choices=("small", "default", "large"), default="default")
    build.add_argument("--speakers", type=int, help="number of synthetic speakers (overrides --size)")
    build.add_argument("--words", type=int, help="use the first N of the 30 Speech Commands words")
    build.add_argument("--renditions", type=int, help="renditions per speaker and word")
    build.add_argument("--seed", type=int, help="random seed (default 0)")
    build.add_argument("--reverb-prob", dest="reverb_prob", type=float,
                       help="probability that a clip gets synthetic reverberation")
    build.add_argument("--engine", choices=("espeak", "flite"), default="espeak",
                       help="voice engine and the corpus preset that goes with it: espeak (the default corpus) "
                            "or flite, the second corpus for cross-dataset tests (CMU Flite's voices, seed 1, "
                            "the mobile channel mix; needs `apt-get install flite1-dev`); --seed and --channels "
                            "override the preset")
    build.add_argument("--channels", choices=("none", "default", "mobile"), default=None,
                       help="recording channel mix applied after room and noise (microphones, telephone band, "
                            "codecs, AGC; bench/data/corpus/channels.py): default (the espeak corpus's), mobile "
                            "(the flite corpus's: fewer clean clips, more codecs and telephone), or none (a "
                            "perfect 16 kHz channel)")
    build.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    build.add_argument("--out", type=Path, default=None, help="parent folder (default $AVBENCH_DATA/corpora)")
    build.add_argument("--force", action="store_true", help="rebuild even if this corpus id exists")
    build.set_defaults(func=_cmd_corpus_build)
    info = corpus_sub.add_parser("info", help="print the summary of a built corpus")
    info.add_argument("path", nargs="?", default="default",
                      help="corpus folder, manifest, size name, or corpus spec such as embedded-flite:small "
                           "(default: default)")
    info.set_defaults(func=_cmd_corpus_info)
    check = corpus_sub.add_parser("check", help="data sanity figures: mouth/audio correlation, word separability, "
                                   "realism, lip reading")
    check.add_argument("path", nargs="?", default="default",
                       help="corpus folder, manifest, size name, or corpus spec such as embedded-flite:small "
                           "(default: default)")
    check.add_argument("--max-clips", type=int, default=2000,
                       help="clips sampled for the correlation (default 2000)")
    check.add_argument("--realism-clips", dest="realism_clips", type=int, default=240,
                       help="clips whose clean speech is re-synthesised for the realism report (LTASS and F0 "
                            "against published values; about 0.2 s of CPU each); 0 skips it (default 240)")
    check.add_argument("--lipreading-clips", dest="lipreading_clips", type=int, default=2880,
                       help="training clips of the lip-reading check (a word reader on frames, tracks and audio, "
                            "scored on unseen test speakers; an eighth as many valid and test clips); 0 skips it "
                            "(default 2880: one rendition of the default corpus, about 10 CPU minutes)")
    check.add_argument("--lipreading-epochs", dest="lipreading_epochs", type=int, default=15,
                       help="epochs of each lip-reading classifier (default 15)")
    check.set_defaults(func=_cmd_corpus_check)
    frames = corpus_sub.add_parser("frames", help="a contact sheet (PNG) of the mouth frames of test-speaker clips")
    frames.add_argument("path", nargs="?", default="default",
                        help="corpus folder, manifest, size name, or corpus spec (default: default)")
    frames.add_argument("--out", required=True, help="the PNG to write")
    frames.add_argument("--rows", type=int, default=8, help="clips shown, one word each (default 8)")
    frames.set_defaults(func=_cmd_corpus_frames)
    compare = corpus_sub.add_parser("compare", help="the realism figures of corpora side by side (markdown)")
    compare.add_argument("corpora", nargs="+", help="corpus folders or specs, each checked by `avbench corpus check`")
    compare.set_defaults(func=_cmd_corpus_compare)


def _add_prepare_commands(sub: argparse._SubParsersAction) -> None:
    prepare = sub.add_parser("prepare", help="turn a local copy of a real corpus into a manifest")
    prep_sub = prepare.add_subparsers(dest="corpus", required=True)
    spc = prep_sub.add_parser("spc", help="Speech Commands v0.01 or v0.02 (one folder per word)")
    spc.add_argument("path", type=Path, help="the extracted speech_commands folder")
    spc.add_argument("--out", type=Path, default=None,
                     help="manifest folder (default $AVBENCH_DATA/prepared/spc-vX.XX)")
    _add_bad_audio(spc)
    spc.set_defaults(func=_cmd_prepare_spc)
    lrw = prep_sub.add_parser("lrw", help="LRW (lipread_mp4/WORD/{train,val,test}/WORD_NNNNN.mp4)")
    lrw.add_argument("path", type=Path, help="the lipread_mp4 folder (or its parent)")
    lrw.add_argument("--out", type=Path, default=None,
                     help="manifest folder (default $AVBENCH_DATA/prepared/lrw)")
    lrw.add_argument("--head-pose", type=Path, default=None,
                     help="CSV with columns clip_id,yaw,pitch,roll (degrees); keeps clips within --max-pose")
    lrw.add_argument("--max-pose", type=float, default=10.0, help="max |yaw|,|pitch|,|roll| in degrees")
    lrw.add_argument("--mouth-crop", type=str, default=None,
                     help="fixed mouth crop x,y,w,h in pixels of the 256x256 frames")
    lrw.add_argument("--mouth-shards", action="store_true",
                     help="also decode every clip's mouth crop once into memory-mapped uint8 shards beside the "
                          "manifest (OUT/mouth-shards), so the visual pretext never decodes an mp4")
    lrw.add_argument("--shard-workers", type=int, default=None,
                     help="processes decoding the shards (default: all cores)")
    lrw.add_argument("--shard-size", type=int, default=64,
                     help="mouth frame size in the shards, pixels (default 64, the visual pretext's)")
    _add_bad_audio(lrw)
    lrw.set_defaults(func=_cmd_prepare_lrw)
    for corpus, help_text, path_help in (
            ("voxceleb1", "VoxCeleb1 (wav/idNNNNN/VIDEO/NNNNN.wav, iden_split.txt, veri_test2.txt)",
             "the folder holding wav/ and iden_split.txt"),
            ("cremad", "CREMA-D (AudioWAV/1001_DFA_ANG_XX.wav)", "the folder holding AudioWAV/"),
            ("ravdess", "RAVDESS speech (Actor_NN/03-01-EE-II-SS-RR-NN.wav)", "the folder holding Actor_NN/"),
            ("iemocap", "IEMOCAP, 4 classes (SessionN/sentences/wav, SessionN/dialog/EmoEvaluation)",
             "the IEMOCAP_full_release folder")):
        speech = prep_sub.add_parser(corpus, help=help_text)
        speech.add_argument("path", type=Path, help=path_help)
        speech.add_argument("--out", type=Path, default=None,
                            help=f"manifest folder (default $AVBENCH_DATA/prepared/{corpus.replace('cremad', 'crema-d')})")
        if corpus in ("cremad", "ravdess"):
            speech.add_argument("--folds", type=int, default=5, help="speaker-disjoint folds (default 5)")
        if corpus == "voxceleb1":
            speech.add_argument("--trials", type=Path, default=None,
                                help="verification trial list (default PATH/veri_test2.txt when present)")
        _add_bad_audio(speech)
        speech.set_defaults(func=_cmd_prepare_speech)


def _add_manifest_commands(sub: argparse._SubParsersAction) -> None:
    manifest = sub.add_parser("manifest", help="inspect a manifest")
    man_sub = manifest.add_subparsers(dest="manifest_command", required=True)
    show = man_sub.add_parser("show", help="validate a manifest and print its summary")
    show.add_argument("path", type=Path)
    show.set_defaults(func=_cmd_manifest_show)
