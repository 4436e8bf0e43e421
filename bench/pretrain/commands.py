"""The pretraining stage's command: `avbench pretrain NAME --data MANIFEST --steps N`."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.arguments import add_device_option, add_precision_option, key_values


def add_commands(sub: argparse._SubParsersAction) -> None:
    pre = sub.add_parser("pretrain", help="pretraining of an encoder on a manifest's audio with an objective: "
                                          "its own or any that fits (--objective); resumable")
    pre.add_argument("name", help="encoder to train: see `avbench list` (apc, wav2vec, pase+, resnet18, ...)")
    pre.add_argument("--objective", default=None,
                     help="objective (default: the encoder's own); `avbench list --objectives` shows which "
                          "encoders each fits: simclr, moco, dino, supervised, ...")
    pre.add_argument("--label-column", dest="label_column", default=None,
                     help="the manifest column a supervised objective learns: label (words), speaker or emotion")
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
    add_device_option(pre)
    add_precision_option(pre)
    pre.add_argument("--loader-workers", dest="loader_workers", type=int, default=None,
                     help="processes making batches ahead of the step (default: none on the CPU, whose cores "
                          "train; on a GPU the cores but one, at most 8); the batches are the same with any number")
    pre.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint-last.pt")
    pre.add_argument("--force", action="store_true", help="start over even if OUT holds a checkpoint")
    pre.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from bench.paths import data_dir
    from bench.pretrain.loop import PretrainConfig, describe_run, pretrain, with_label_column

    pretext_kwargs = with_label_column(key_values(args.pretext_arg, "--pretext-arg"), args.label_column,
                                       ("--label-column", "--pretext-arg label_column=..."))
    config = PretrainConfig(
        encoder=args.name, data=args.data, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
        crop_seconds=args.crop_seconds, lr=args.lr, seed=args.seed, splits=tuple(args.splits.split(",")),
        save_every=args.save_every, log_every=args.log_every, precision=args.precision,
        loader_workers=args.loader_workers,
        encoder_kwargs=key_values(args.encoder_arg, "--encoder-arg"), pretext_kwargs=pretext_kwargs,
        objective=args.objective).validated()
    if args.out is None:
        budget = f"{config.steps}steps" if config.steps is not None else f"{config.epochs:g}epochs"
        data = Path(config.data).name if "/" in config.data else config.data.replace(":", "-")
        run = config.encoder if config.objective is None else f"{config.encoder}-{config.objective}"
        if "label_column" in config.pretext_kwargs:
            run += f"-{config.pretext_kwargs['label_column']}"
        args.out = data_dir() / "pretrained" / f"{run}-{data}-{budget}-seed{config.seed}"
    summary = pretrain(config, args.out, resume=args.resume, force=args.force, progress=not args.quiet,
                       device=args.device)
    if not summary:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(f"{describe_run(config)} pretrained on {summary['data_name']} ({summary['clips']} clips): step "
          f"{summary['step']}/{summary['total_steps']} ({summary['epochs_done']:g} epochs), final loss "
          f"{summary['final_loss']}, {summary['seconds']:.0f} s on {summary['device_name']} ({summary['precision']})")
    print(f"curve:   {Path(args.out) / 'loss.csv'} and loss.png")
    print(f"encoder: {config.encoder}@{Path(args.out) / 'encoder.pt'}")
    return 0


def objective_rows() -> list[dict]:
    """Every registered objective: what it needs, its version, and the encoders it fits (built once
    each; families such as s3prl:<variant> are left out, they need a variant to build)."""
    from bench.pretrain.objective import _PRETEXTS, list_objectives, objective_needs, objective_version
    from bench.registry import create_encoder, encoder_entry, list_encoders

    encoders = {}
    for name in list_encoders():
        if encoder_entry(name).family:
            continue
        try:
            encoders[name] = create_encoder(name)
        except Exception:  # a broken encoder fits nothing; `avbench list` says why
            continue
    rows = []
    for name in list_objectives():
        needs = objective_needs(name)
        doc = (_PRETEXTS[name].__doc__ or "").strip().splitlines()
        rows.append({"objective": name, "version": objective_version(name), "needs": needs.describe(),
                     "own_objective_of": [name] if name in (needs.encoders or ()) else [],
                     "fits": [e for e, enc in encoders.items() if not needs.misfits(enc)],
                     "doc": doc[0] if doc else ""})
    return rows


def print_objectives(as_json: bool = False) -> int:
    import json

    rows = objective_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'objective':<16} {'needs':<38} fits")
    for r in rows:
        print(f"{r['objective']:<16} {r['needs']:<38} {', '.join(r['fits']) or 'no registered encoder'}")
    print("\nThe default objective of `avbench pretrain ENCODER` is the one named after the encoder; "
          "choose another with --objective.")
    return 0
