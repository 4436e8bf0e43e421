"""The `avbench` command line. Each subcommand imports its module lazily, so `avbench --help`
stays fast and a broken optional part never breaks the others."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench import __version__


def _add_bad_audio(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-bad-audio", choices=("error", "skip"), default="error",
                   help="stop at the first corrupt/empty/silent/NaN file (default), or skip it, "
                        "log it and list it in manifest.json")


def _cmd_corpus_build(args: argparse.Namespace) -> int:
    from bench.data.corpus.build import CorpusConfig, build_corpus, summary_text

    overrides = {k: getattr(args, k) for k in ("speakers", "words", "renditions", "seed", "reverb_prob")
                 if getattr(args, k) is not None}
    config = CorpusConfig.from_size(args.size, **overrides)
    corpus = build_corpus(config, out_root=args.out, workers=args.workers, force=args.force,
                          progress=not args.quiet)
    print(summary_text(corpus))
    return 0


def _cmd_corpus_info(args: argparse.Namespace) -> int:
    from bench.data.corpus.build import find_corpus, summary_text

    print(summary_text(find_corpus(args.path)))
    return 0


def _cmd_corpus_check(args: argparse.Namespace) -> int:
    from bench.data.corpus.build import find_corpus
    from bench.data.corpus.checks import mouth_audio_correlation, nearest_centroid_accuracy

    corpus = find_corpus(args.path)
    corr = mouth_audio_correlation(corpus, max_clips=args.max_clips)
    words = corpus.manifest.table["label"].nunique()
    print(f"corpus: {corpus.path}")
    print(f"mouth opening vs 40 ms RMS energy, Pearson r: all frames {corr.all_frames:.3f} "
          f"(n={corr.n_frames}), speech frames {corr.speech_frames:.3f} (n={corr.n_speech_frames})")
    print("nearest-centroid word accuracy on mean MFCC-13, train -> test speakers "
          f"(chance {1 / words:.3f}): whole clip {nearest_centroid_accuracy(corpus):.3f}, "
          f"speech span {nearest_centroid_accuracy(corpus, speech_only=True):.3f}")
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
    print(summarize(read_manifest(path)))
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


def _cmd_list(args: argparse.Namespace) -> int:
    import json

    from bench.registry import count_parameters, create_encoder, encoder_entry, list_encoders

    rows = []
    for name in list_encoders():
        if encoder_entry(name).family:
            rows.append({"name": f"{name}:<variant>", "family": True, "source": encoder_entry(name).source,
                         "doc": (encoder_entry(name).factory.__doc__ or "").strip().splitlines()[0:1]})
            continue
        try:
            enc = create_encoder(name)
        except Exception as exc:  # one broken encoder must not hide the list
            rows.append({"name": name, "error": str(exc), "source": encoder_entry(name).source})
            continue
        rows.append({"name": name, "dim": int(enc.dim), "frame_rate": float(enc.frame_rate),
                     "params": count_parameters(enc), "needs_pretraining": bool(getattr(enc, "needs_pretraining", False)),
                     "source": encoder_entry(name).source})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'encoder':<20} {'dim':>5} {'rate Hz':>8} {'params':>11}  {'needs pretraining/checkpoint':<29} source")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<20} failed to build: {r['error']}")
            continue
        if r.get("family"):
            print(f"{r['name']:<20} {'a family: dims and rates depend on the variant':<57} {r['source']}")
            continue
        print(f"{r['name']:<20} {r['dim']:>5} {r['frame_rate']:>8g} {r['params']:>11,}  "
              f"{'yes' if r['needs_pretraining'] else 'no':<29} {r['source']}")
    return 0


def _key_values(pairs: list[str] | None, flag: str) -> dict:
    """['layer=2', 'dims=[64, 128]'] -> {'layer': 2, 'dims': [64, 128]} (values parsed as YAML)."""
    import yaml

    from bench.errors import ConfigError

    out = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} layer=2")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{flag} {pair!r}: the value is not valid YAML ({exc})") from exc
    return out


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from bench.paths import data_dir
    from bench.pretrain.loop import PretrainConfig, pretrain

    config = PretrainConfig(
        encoder=args.name, data=args.data, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
        crop_seconds=args.crop_seconds, lr=args.lr, seed=args.seed, splits=tuple(args.splits.split(",")),
        save_every=args.save_every, log_every=args.log_every,
        encoder_kwargs=_key_values(args.encoder_arg, "--encoder-arg"),
        pretext_kwargs=_key_values(args.pretext_arg, "--pretext-arg")).validated()
    if args.out is None:
        budget = f"{config.steps}steps" if config.steps is not None else f"{config.epochs:g}epochs"
        data = Path(config.data).name if "/" in config.data else config.data.replace(":", "-")
        args.out = data_dir() / "pretrained" / f"{config.encoder}-{data}-{budget}-seed{config.seed}"
    summary = pretrain(config, args.out, resume=args.resume, force=args.force, progress=not args.quiet)
    if not summary:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(f"{config.encoder} pretrained on {summary['data_name']} ({summary['clips']} clips): step "
          f"{summary['step']}/{summary['total_steps']} ({summary['epochs_done']:g} epochs), final loss "
          f"{summary['final_loss']}, {summary['seconds']:.0f} s")
    print(f"curve:   {Path(args.out) / 'loss.csv'} and loss.png")
    print(f"encoder: {config.encoder}@{Path(args.out) / 'encoder.pt'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from bench.evaluate.identity import RunConfig
    from bench.evaluate.run import run_experiment

    settings = {"encoder": args.encoder, "task": args.task, "mode": args.mode, "seed": args.seed,
                "label_fraction": args.label_fraction, "checkpoint": args.checkpoint,
                "encoder_kwargs": _key_values(args.encoder_arg, "--encoder-arg")}
    for key in ("epochs", "lr", "lr_drop_epoch", "lr_after_drop", "encoder_lr", "batch_size", "pooling",
                "task_type", "k_shot", "budget_steps", "label_map"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.eval_task:
        settings["eval_tasks"] = args.eval_task
    record = run_experiment(RunConfig.from_dict(settings), args.records, force=args.force, progress=not args.quiet)
    what = "already recorded" if record.get("skipped") else "recorded"
    labels = f"{record['k_shot']}-shot" if record.get("k_shot") else f"{record['label_fraction']:g} labels"
    metrics = ", ".join(f"{name} {100 * value:.2f}%" for name, value in (record.get("metrics") or
                                                                          {"accuracy": record["test_acc"]}).items())
    print(f"{record['encoder']} on {record['task']} ({record.get('task_type', 'words')}, {record['mode']}, {labels}, "
          f"seed {record['seed']}): test {metrics} at best val epoch {record['best_epoch']} "
          f"(val accuracy {100 * record['val_acc']:.2f}%); {what} in {args.records} as {record['config_hash']}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_sweep(args: argparse.Namespace) -> int:
    from bench.sweep.executors import LocalExecutor, RayExecutor
    from bench.sweep.config import load_sweep
    from bench.sweep.cost import dry_run_report
    from bench.sweep.run import run_sweep
    from bench.results.write import write_tables

    sweep = load_sweep(args.config)
    if args.records is not None:
        sweep.records = args.records
    if args.dry_run:
        print(dry_run_report(sweep))
        return 0
    if args.executor == "ray":
        executor = RayExecutor(args.ray_address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
    else:
        executor = LocalExecutor(workers=args.workers, runs_per_device=args.runs_per_device)
    summary = run_sweep(sweep, force=args.force, progress=not args.quiet, executor=executor, plugins=args.plugin)
    if sweep.tables is not None:
        for path in write_tables(sweep.records, sweep.tables):
            print(f"wrote {path}")
    print(f"sweep {sweep.name}: {summary['ran']} run(s) done, {summary['skipped']} already recorded, "
          f"{len(summary['failed'])} failed")
    for line in summary["failed"]:
        print(f"  FAILED {line}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def _cmd_tables(args: argparse.Namespace) -> int:
    from bench.results.write import write_tables

    if not Path(args.records).is_file():
        print(f"avbench: error: {args.records}: no run records yet. Run `avbench run` or `avbench sweep` first.",
              file=sys.stderr)
        return 2
    for path in write_tables(args.records, args.out):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avbench", description="avbench: a benchmark harness for speech representations.")
    parser.add_argument("--version", action="version", version=f"avbench {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import a module (or a .py file) that registers encoders; repeatable")
    sub = parser.add_subparsers(dest="command", required=True)

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
    build.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    build.add_argument("--out", type=Path, default=None, help="parent folder (default $AVBENCH_DATA/corpora)")
    build.add_argument("--force", action="store_true", help="rebuild even if this corpus id exists")
    build.set_defaults(func=_cmd_corpus_build)
    info = corpus_sub.add_parser("info", help="print the summary of a built corpus")
    info.add_argument("path", nargs="?", default="default",
                      help="corpus folder, manifest, or size name (default: default)")
    info.set_defaults(func=_cmd_corpus_info)
    check = corpus_sub.add_parser("check", help="data sanity figures: mouth/audio correlation, word separability")
    check.add_argument("path", nargs="?", default="default",
                       help="corpus folder, manifest, or size name (default: default)")
    check.add_argument("--max-clips", type=int, default=2000,
                       help="clips sampled for the correlation (default 2000)")
    check.set_defaults(func=_cmd_corpus_check)

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

    manifest = sub.add_parser("manifest", help="inspect a manifest")
    man_sub = manifest.add_subparsers(dest="manifest_command", required=True)
    show = man_sub.add_parser("show", help="validate a manifest and print its summary")
    show.add_argument("path", type=Path)
    show.set_defaults(func=_cmd_manifest_show)

    lst = sub.add_parser("list", help="every registered encoder with its dim, frame rate and size")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(func=_cmd_list)

    run = sub.add_parser("run", help="one evaluation run of the shared BiGRU loop; appends a record")
    run.add_argument("--encoder", required=True, help="registered name, optionally NAME@CHECKPOINT")
    run.add_argument("--task", required=True,
                     help="embedded[:small|default|large], a manifest path, or a prepared corpus name")
    run.add_argument("--mode", choices=("frozen", "finetune", "scratch"), default="frozen")
    run.add_argument("--epochs", type=int, help="default 50 (paper protocol)")
    run.add_argument("--lr", type=float, help="default 1e-4 (paper protocol)")
    run.add_argument("--lr-drop-epoch", dest="lr_drop_epoch", type=int, help="default 40: lr drops after it")
    run.add_argument("--lr-after-drop", dest="lr_after_drop", type=float, help="default 1e-5")
    run.add_argument("--encoder-lr", dest="encoder_lr", type=float, help="finetune/scratch (default: --lr)")
    run.add_argument("--batch-size", dest="batch_size", type=int, help="default 32")
    run.add_argument("--pooling", choices=("last", "mean"), help="default last")
    run.add_argument("--task-type", dest="task_type",
                     choices=("words", "speaker-id", "speaker-verification", "emotion"), help="default words")
    run.add_argument("--label-fraction", dest="label_fraction", type=float, default=1.0)
    run.add_argument("--k-shot", dest="k_shot", type=int, help="K labelled clips per class instead of a fraction")
    run.add_argument("--budget-steps", dest="budget_steps", type=int,
                     help="train for exactly N optimizer steps (spread over --epochs rounds) instead of epochs")
    run.add_argument("--eval-task", dest="eval_task", action="append", metavar="TASK",
                     help="also test the trained model on this task (same label space; repeatable)")
    run.add_argument("--label-map", dest="label_map", help="emotion: map labels to a shared space (e.g. emotion)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--checkpoint", default=None, help="encoder checkpoint (same as NAME@PATH)")
    run.add_argument("--encoder-arg", dest="encoder_arg", action="append", metavar="KEY=VALUE",
                     help="encoder constructor argument, e.g. --encoder-arg layer=2 (repeatable)")
    run.add_argument("--records", type=Path, default=Path("results/runs.jsonl"))
    run.add_argument("--force", action="store_true", help="run even if this config is already recorded")
    run.set_defaults(func=_cmd_run)

    pre = sub.add_parser("pretrain", help="self-supervised pretraining of an encoder on a manifest's audio "
                                          "(labels ignored); resumable")
    pre.add_argument("name", help="encoder with an objective: see `avbench list` (apc, wav2vec, pase+, ...)")
    pre.add_argument("--data", required=True,
                     help="embedded[:small|default|large], a manifest path, or a prepared corpus name")
    budget = pre.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="budget in optimizer steps")
    budget.add_argument("--epochs", type=float, help="budget in passes over the clips (turned into steps)")
    pre.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    pre.add_argument("--crop-seconds", dest="crop_seconds", type=float, default=1.0,
                     help="random crop length; shorter clips are padded (default 1.0)")
    pre.add_argument("--lr", type=float, default=None, help="Adam lr (default: the objective's own)")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--splits", default="train",
                     help="comma-separated manifest splits to read (default train: keep test speakers unseen)")
    pre.add_argument("--save-every", dest="save_every", type=int, default=500, help="checkpoint period in steps")
    pre.add_argument("--log-every", dest="log_every", type=int, default=10, help="loss-curve period in steps")
    pre.add_argument("--encoder-arg", dest="encoder_arg", action="append", metavar="KEY=VALUE")
    pre.add_argument("--pretext-arg", dest="pretext_arg", action="append", metavar="KEY=VALUE",
                     help="objective argument, e.g. --pretext-arg n_ahead=5 (repeatable)")
    pre.add_argument("--out", type=Path, default=None,
                     help="output folder (default $AVBENCH_DATA/pretrained/NAME-DATA-BUDGET-seedS)")
    pre.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last.pt")
    pre.add_argument("--force", action="store_true", help="start over even if OUT holds a checkpoint")
    pre.set_defaults(func=_cmd_pretrain)

    sweep = sub.add_parser("sweep", help="run a YAML grid of runs, skipping recorded ones")
    sweep.add_argument("config", type=Path)
    sweep.add_argument("--records", type=Path, default=None, help="override the config's records path")
    sweep.add_argument("--force", action="store_true", help="re-run recorded configs")
    sweep.add_argument("--dry-run", action="store_true",
                       help="count recorded, failed and remaining runs, estimate the cost, and exit")
    sweep.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local worker processes (default) or Ray tasks (pip install 'avbench[ray]')")
    sweep.add_argument("--workers", type=_positive_int, default=None,
                       help="local: concurrent runs (default: --runs-per-device per device, else one per core)")
    sweep.add_argument("--runs-per-device", dest="runs_per_device", type=_positive_int, default=None,
                       help="local: concurrent runs per GPU, or on the machine without GPUs")
    sweep.add_argument("--ray-address", dest="ray_address", default=None,
                       help="ray: cluster address (default: start a local Ray instance)")
    sweep.add_argument("--cpus-per-run", dest="cpus_per_run", type=float, default=1.0, help="ray: default 1")
    sweep.add_argument("--gpus-per-run", dest="gpus_per_run", type=float, default=0.0, help="ray: default 0")
    sweep.set_defaults(func=_cmd_sweep)

    tables = sub.add_parser("tables", help="regenerate result tables from the run records (no torch work)")
    tables.add_argument("--records", type=Path, default=Path("results/runs.jsonl"))
    tables.add_argument("--out", type=Path, default=Path("results"))
    tables.set_defaults(func=_cmd_tables)
    return parser


def main(argv: list[str] | None = None) -> int:
    """avbench: a benchmark harness for speech representations."""
    args = build_parser().parse_args(argv)
    if args.command in ("run", "sweep", "pretrain"):
        from bench.runtime import flush_denormals

        flush_denormals()  # before torch's thread pool exists, so every worker thread inherits it
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from bench.data.audio import AudioError
    from bench.errors import ConfigError
    from bench.data.manifest import ManifestError
    from bench.data.prepare.common import CorpusLayoutError

    try:
        for plugin in args.plugin:
            from bench.registry import import_plugin

            import_plugin(plugin)
        return int(args.func(args) or 0)
    except (AudioError, ManifestError, CorpusLayoutError, ConfigError, FileNotFoundError) as exc:
        # These errors name the file and the fix: print them, not a traceback (unless -v).
        if args.verbose:
            raise
        print(f"avbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
