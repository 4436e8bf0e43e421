"""The evaluation stage's commands: `avbench list` (the registered encoders) and `avbench run`
(one run of the shared downstream loop)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.arguments import add_device_option, add_precision_option, key_values


def add_commands(sub: argparse._SubParsersAction) -> None:
    lst = sub.add_parser("list", help="every registered encoder with its dim, frame rate and size "
                                      "(--objectives: every pretraining objective and the encoders it fits)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.add_argument("--objectives", action="store_true",
                     help="list the pretraining objectives, what each needs and which encoders it fits")
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
    add_device_option(run)
    add_precision_option(run, default=None)
    run.add_argument("--records", type=Path, default=Path("results/runs.jsonl"))
    run.add_argument("--force", action="store_true", help="run even if this config is already recorded")
    run.set_defaults(func=_cmd_run)


def _cmd_list(args: argparse.Namespace) -> int:
    import json

    from bench.registry import count_parameters, create_encoder, encoder_entry, list_encoders

    if args.objectives:
        from bench.pretrain.commands import print_objectives

        return print_objectives(as_json=args.json)

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



def _cmd_run(args: argparse.Namespace) -> int:
    from bench.evaluate.identity import RunConfig
    from bench.evaluate.run import run_experiment

    settings = {"encoder": args.encoder, "task": args.task, "mode": args.mode, "seed": args.seed,
                "label_fraction": args.label_fraction, "checkpoint": args.checkpoint,
                "encoder_kwargs": key_values(args.encoder_arg, "--encoder-arg")}
    for key in ("epochs", "lr", "lr_drop_epoch", "lr_after_drop", "encoder_lr", "batch_size", "pooling",
                "task_type", "k_shot", "budget_steps", "label_map", "precision"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.eval_task:
        settings["eval_tasks"] = args.eval_task
    record = run_experiment(RunConfig.from_dict(settings), args.records, force=args.force, progress=not args.quiet,
                            device=args.device)
    what = "already recorded" if record.get("skipped") else "recorded"
    labels = f"{record['k_shot']}-shot" if record.get("k_shot") else f"{record['label_fraction']:g} labels"
    metrics = ", ".join(f"{name} {100 * value:.2f}%" for name, value in (record.get("metrics") or
                                                                          {"accuracy": record["test_acc"]}).items())
    print(f"{record['encoder']} on {record['task']} ({record.get('task_type', 'words')}, {record['mode']}, {labels}, "
          f"seed {record['seed']}): test {metrics} at best val epoch {record['best_epoch']} "
          f"(val accuracy {100 * record['val_acc']:.2f}%); {what} in {args.records} as {record['config_hash']}"
          + ("" if record.get("skipped") else f" ({record['device_name']}, {record['precision']})"))
    return 0
