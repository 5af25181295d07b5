"""`emogen` command line: one subcommand per stage; jobs/ entrypoints call into it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from emogen.config import AudioConfig


def _print_summary(summary: dict) -> None:
    # The last line of every job is one JSON object, easy to grep from `ray job logs`.
    print(json.dumps(summary, sort_keys=True), flush=True)


# ------------------------------------------------------------------------ commands


def cmd_corpus(args: argparse.Namespace) -> dict:
    from emogen.corpus import generate_corpus

    files = generate_corpus(args.out, preset=args.preset, seed=args.seed, workers=args.workers)
    return {
        "corpus": str(args.out),
        "preset": args.preset,
        "seed": args.seed,
        "files": int(len(files)),
        "by_dataset": {k: int(v) for k, v in files["dataset"].value_counts().sort_index().items()},
    }


def cmd_preprocess(args: argparse.Namespace) -> dict:
    from emogen.data import preprocess
    from emogen.datasets import build_manifest, summarize_labels
    from emogen.runtime import init_ray

    inputs = args.input or []
    manifest = build_manifest(inputs, csv=args.csv, dataset=args.dataset)
    if manifest.empty:
        raise SystemExit(f"no audio files found under {', '.join(map(str, inputs)) or args.csv}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(out / "manifest.csv", index=False)
    labels = summarize_labels(manifest)
    print(
        f"[preprocess] {labels['files']} files, {labels['labelled']} labelled with one of the 6 emotions, "
        f"excluded {labels['excluded']}, {labels['label_errors']} label errors",
        file=sys.stderr,
        flush=True,
    )
    init_ray(args.address, args.num_cpus)
    summary = preprocess(manifest, out, AudioConfig(), batch_size=args.batch_size, concurrency=args.concurrency)
    summary["excluded"] = labels["excluded"]
    return summary


def cmd_train(args: argparse.Namespace) -> dict:
    from emogen.config import load_overrides
    from emogen.runtime import init_ray
    from emogen.train import fit

    overrides = load_overrides(args.config)
    overrides.pop("best_metric", None)  # best_config.json from a sweep carries its score
    init_ray(args.address, args.num_cpus)
    return fit(
        args.model,
        args.data,
        preset=args.preset,
        overrides=overrides,
        epochs=args.epochs,
        num_workers=args.num_workers,
        use_gpu=args.use_gpu,
        storage_path=args.storage_path,
        run_name=args.run_name,
        tracking_uri=args.tracking_uri,
        vae_checkpoint=args.vae_checkpoint,
        max_failures=args.max_failures,
        fail_at_epoch=args.fail_at_epoch,
    )


def cmd_demo(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    corpus = cmd_corpus(argparse.Namespace(out=out / "corpus", preset=args.preset, seed=args.seed, workers=args.workers))
    print(f"[demo] corpus: {corpus['files']} files in {corpus['corpus']}", file=sys.stderr, flush=True)
    pre = cmd_preprocess(
        argparse.Namespace(
            input=[out / "corpus"], csv=None, dataset="auto", output=out / "data",
            address=args.address, num_cpus=args.num_cpus, batch_size=16, concurrency=None,
        )
    )
    return {"corpus": corpus, "preprocess": pre}


# -------------------------------------------------------------------------- parser


def _ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else start a local instance)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray instance (default: all)")


def add_train_arguments(p: argparse.ArgumentParser, model: str | None) -> None:
    """Options shared by `emogen train MODEL` and jobs/train_MODEL.py."""
    if model is None:
        p.add_argument("model", choices=["ser", "vae", "diffusion"])
    else:
        p.set_defaults(model=model)
    p.add_argument("--data", type=Path, required=True, help="preprocess output folder (or its features/)")
    p.add_argument("--preset", default="demo", help="tiny | demo | paper: model sizes and training defaults")
    p.add_argument("--config", type=Path, default=None, help="JSON/YAML overrides, e.g. {\"train\": {\"lr\": 1e-3}, \"ser\": {...}}")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (data-parallel)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL")
    p.add_argument("--storage-path", default="runs/train", help="local dir, shared file system or s3:// URI")
    p.add_argument("--run-name", default=None, help="re-use a name to resume that run (default MODEL-PRESET)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: local store in runs/mlflow)")
    p.add_argument("--vae-checkpoint", default=None, help="diffusion in latent space: the trained VAE checkpoint")
    p.add_argument("--max-failures", type=int, default=1, help="worker-group restarts from the last checkpoint")
    p.add_argument("--fail-at-epoch", type=int, default=-1, help=argparse.SUPPRESS)  # fault-tolerance drills
    _ray_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emogen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("corpus", help="write the embedded demo corpus (EmoDB- and RAVDESS-style WAVs)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="demo", help="tiny | demo | large")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes for synthesis")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("preprocess", help="corpus folders -> log-mel Parquet with Ray Data")
    p.add_argument("--input", type=Path, action="append", help="corpus folder (EmoDB/RAVDESS names); repeatable")
    p.add_argument("--csv", type=Path, default=None, help="label CSV with columns path, emotion, speaker")
    p.add_argument("--dataset", default="auto", choices=["auto", "emodb", "ravdess"], help="file-name scheme of --input folders")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=None, help="featurizer actors (default: one per CPU)")
    _ray_options(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("train", help="train a model with Ray Train (checkpoints every epoch, resumable)")
    add_train_arguments(p, model=None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded demo corpus")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--preset", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    _ray_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], dict] = args.func
    _print_summary(func(args))


if __name__ == "__main__":
    main()
