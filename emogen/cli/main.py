"""`emogen` command line: one subcommand per stage; jobs/ entrypoints call into it."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from emogen import storage
from emogen.cli import serve as serve_command
from emogen.config import EMOTIONS, AudioConfig, load_overrides
from emogen.errors import UserError
from emogen.logs import configure_logging, get_logger
from emogen.options import add_config_options, add_ray_options, config_values
from emogen.runtime import init_ray, stop_on_sigterm, stop_requested
from emogen.tracking import runs as tracking
from emogen.tracking.registry import TRACKING_URI_HELP, list_versions, promote

if TYPE_CHECKING:
    # deferred: type hints only; the experiment's modules load with the commands that run it
    from emogen.experiment.config import ExperimentConfig


SubParsers = argparse._SubParsersAction  # what add_subparsers returns (argparse names it privately)


def _print_summary(summary: dict) -> None:
    # The last line of every job is one JSON object, easy to grep from `ray job logs`.
    print(json.dumps(summary, sort_keys=True), flush=True)


# ------------------------------------------------------------------------ commands


def cmd_corpus(args: argparse.Namespace) -> dict:
    # deferred: the data stages load pandas and soundfile, which `emogen --help` does not need
    from emogen.data.corpus import generate_corpus

    if storage.is_uri(args.out):  # written here, then uploaded whole to the bucket
        with tempfile.TemporaryDirectory(prefix="emogen-corpus-") as local:
            files = generate_corpus(local, preset=args.preset, seed=args.seed, workers=args.workers)
            storage.upload(local, args.out)
    else:
        files = generate_corpus(args.out, preset=args.preset, seed=args.seed, workers=args.workers)
    return {
        "corpus": str(args.out),
        "preset": args.preset,
        "seed": args.seed,
        "files": int(len(files)),
        "by_dataset": {k: int(v) for k, v in files["dataset"].value_counts().sort_index().items()},
    }


def cmd_preprocess(args: argparse.Namespace) -> dict:
    # deferred: the data stages load pandas, pyarrow and soundfile, which `emogen --help` does not need
    from emogen.data.datasets import build_manifest, summarize_labels
    from emogen.data.features import preprocess

    inputs = [str(location) for location in args.input or []]  # folders or storage prefixes, as given
    manifest = build_manifest(inputs, csv=args.csv, dataset=args.dataset)
    if manifest.empty:
        raise UserError(f"no audio files found under {', '.join(inputs) or args.csv}")
    out = storage.absolute(args.output)
    storage.make_dirs(out)
    # beside the features, before them: what was found and how it is labelled, even if
    # featurizing fails (a missing output bucket is reported here, in one line)
    storage.write_text(storage.join(out, "manifest.csv"), manifest.to_csv(index=False))
    labels = summarize_labels(manifest)
    get_logger("preprocess").info(
        "%d files, %d labelled with one of the 6 emotions, excluded %s, %d label errors",
        labels["files"], labels["labelled"], labels["excluded"], labels["label_errors"],
    )
    init_ray(args.address, args.num_cpus)
    summary = preprocess(manifest, out, AudioConfig(), batch_size=args.batch_size, concurrency=args.concurrency)
    summary["excluded"] = labels["excluded"]
    return summary


def cmd_train(args: argparse.Namespace) -> dict:
    # deferred: training loads torch and Ray Train with the command that needs them
    from emogen.data.features import features_dir
    from emogen.training import FitConfig, fit

    features_dir(args.data)  # a wrong --data is one line, before Ray starts
    overrides = load_overrides(args.config)
    overrides.pop("best_metric", None)  # best_config.json from a sweep carries its score
    init_ray(args.address, args.num_cpus)
    return fit(args.model, args.data, FitConfig(**{**config_values(FitConfig, args), "overrides": overrides}))


def cmd_generate(args: argparse.Namespace) -> dict:
    # deferred: the generator loads torch and diffusers, which only the generating commands need
    from emogen.inference.config import GenerateConfig
    from emogen.inference.generator import EmotionGenerator, write_wavs
    from emogen.models.device import choose_device

    config = GenerateConfig(**config_values(GenerateConfig, args))
    started = time.time()
    device = choose_device(config.device)  # before loading: an impossible --device fails in a moment
    generator = EmotionGenerator.from_checkpoint(config.checkpoint, device=device, tracking_uri=config.tracking_uri)
    emotions = list(EMOTIONS) if config.emotion == "all" else [config.emotion]
    files = []
    for emotion in emotions:
        mels = generator.generate(emotion, config.num_samples, seed=config.seed, vae_latent=config.vae_latent,
                                  **asdict(config.sampling))
        names = [f"{emotion}_{config.seed}_{i}" for i in range(len(mels))]
        files += write_wavs(generator.to_audio(mels), config.out, names, generator.audio.sample_rate)
        get_logger("generate").info("%s: %d clips", emotion, len(mels))
    return {"model": generator.kind, "device": str(device), "files": [str(f) for f in files],
            "seconds": round(time.time() - started, 1)}


def cmd_attention(args: argparse.Namespace) -> dict:
    # deferred: the generator loads torch and diffusers, which only the generating commands need
    from emogen.inference.attention import capture_attention, plot_attention
    from emogen.inference.config import AttentionConfig
    from emogen.inference.generator import EmotionGenerator
    from emogen.models.device import choose_device

    config = AttentionConfig(**config_values(AttentionConfig, args))
    started = time.time()
    device = choose_device(config.device)  # before loading: an impossible --device fails in a moment
    generator = EmotionGenerator.from_checkpoint(config.checkpoint, device=device, tracking_uri=config.tracking_uri)
    maps = capture_attention(generator, config.emotion, steps_to_capture=config.steps_to_capture, seed=config.seed,
                             **asdict(config.sampling))
    path = plot_attention(maps, config.png_path)
    get_logger("attention").info("%s: %d steps x %d attention blocks -> %s", config.emotion, len(maps.steps),
                                 len(maps.blocks), path)
    return {
        "model": generator.kind,
        "device": str(device),
        "emotion": config.emotion,
        "png": str(path),
        "steps": maps.step_indices,
        "timesteps": [s.timestep for s in maps.steps],
        "num_inference_steps": maps.num_inference_steps,
        "blocks": {name: list(grid) for name, grid in maps.grids.items()},
        "seconds": round(time.time() - started, 1),
    }


def cmd_models_promote(args: argparse.Namespace) -> dict:
    return promote(args.name, args.version, args.alias, args.tracking_uri)


def cmd_models_list(args: argparse.Namespace) -> dict:
    return {"model": args.name, "versions": list_versions(args.name, args.tracking_uri)}


def cmd_experiment(args: argparse.Namespace) -> dict:
    if args.data is None and not args.input and args.csv is None:
        raise SystemExit("emogen experiment needs --data (preprocessed features) or --input/--csv (audio to preprocess)")
    config = _experiment_config(args)
    if args.data is not None:
        # deferred: the data stages load pandas and pyarrow, which `emogen --help` does not need
        from emogen.data.features import features_dir

        features_dir(args.data)  # a wrong --data is one line, before Ray starts
    seconds: dict[str, float] = {}
    data = args.data or _preprocess_for_experiment(args, args.input, args.csv, args.dataset, seconds)
    command = "emogen " + shlex.join(map(str, args.argv))  # the subcommand included, also when run as jobs/augment.py
    return _run_experiment(args, data, config, seconds, command)


def cmd_demo(args: argparse.Namespace) -> dict:
    """The embedded demo corpus -> the full augmentation experiment, all under --out (and
    --storage-path when given: the corpus is uploaded there for the workers to read)."""
    out = Path(args.out)
    config = _experiment_config(args)
    began = time.time()
    corpus = cmd_corpus(argparse.Namespace(out=out / "corpus", preset=args.corpus, seed=args.seed, workers=args.workers))
    get_logger("demo").info("corpus: %d files in %s", corpus["files"], corpus["corpus"])
    corpus_location = str(out / "corpus")
    if args.storage_path and storage.is_uri(args.storage_path):  # where every node can read it
        corpus_location = storage.upload(out / "corpus", storage.join(args.storage_path, "corpus"))
    seconds = {"corpus": round(time.time() - began, 1)}
    data = _preprocess_for_experiment(args, [corpus_location], None, "auto", seconds)
    storage_option = f" --storage-path {args.storage_path}" if args.storage_path else ""
    return _run_experiment(args, data, config, seconds,
                           f"emogen demo --out {out} --preset {args.preset}{storage_option}")


def _experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    """The preset's experiment section with the options given (each named after its field)."""
    # deferred: the experiment's config loads torch and scipy; only the experiment commands need it
    from emogen.experiment.config import ExperimentConfig, experiment_config

    return experiment_config(args.preset, config_values(ExperimentConfig, args))


def _preprocess_for_experiment(args: argparse.Namespace, inputs: list[str] | None, csv: str | None, dataset: str,
                               seconds: dict[str, float]) -> str:
    """Audio -> STORAGE/data features (STORAGE: --storage-path, else --out: every node reads
    them), unless an earlier run made them; the time it took goes into seconds["preprocess"]."""
    data = storage.join(args.storage_path or args.out, "data")
    if not storage.is_dir(storage.join(data, "features")):
        began = time.time()
        cmd_preprocess(argparse.Namespace(input=inputs, csv=csv, dataset=dataset, output=data, address=args.address,
                                          num_cpus=args.num_cpus, batch_size=None, concurrency=None))
        seconds["preprocess"] = round(time.time() - began, 1)
    return data


def _run_experiment(args: argparse.Namespace, features: str, config: ExperimentConfig, seconds_before: dict[str, float],
                    command: str) -> dict:
    # deferred: the experiment loads torch, Ray and scipy with the command that needs them
    from emogen.experiment.run import run_experiment
    from emogen.experiment.report import results_table
    from emogen.experiment.results import SER_JUDGE, UA

    init_ray(args.address, args.num_cpus)
    results = run_experiment(features, args.out, preset=args.preset, config=config, name=args.name,
                             tracking_uri=args.tracking_uri, command=command, seconds_before=seconds_before,
                             overrides=load_overrides(args.config), storage_path=args.storage_path)
    log = get_logger("experiment")
    log.info("\n%s\n", results_table(results))
    log.info("report: %s (and report.md, results.json) in %s", results.report["html"], args.out)
    return {
        "experiment": results.name,
        "out": str(args.out),
        "report": results.report,
        "unweighted_accuracy": {c: round(scores[UA].mean, 4) for c, scores in results.summary.items()},
        # by the judge SER, which did not choose the kept clips (the filter's clarity is biased)
        "clarity": {g: round(generated.judged[SER_JUDGE].all.mean, 4) for g, generated in results.generated.items()},
        "seconds": results.seconds,
    }


# -------------------------------------------------------------------------- parser


def add_train_arguments(p: argparse.ArgumentParser, model: str | None) -> None:
    """Options shared by `emogen train MODEL` and jobs/train_MODEL.py: the FitConfig fields
    (same names, same defaults) plus the data, overrides file and the Ray cluster."""
    # deferred: emogen.training loads torch; `import emogen.cli.main` (jobs/) stays light until a parser is built
    from emogen.training import MODELS, FitConfig

    if model is None:
        p.add_argument("model", choices=list(MODELS))
    else:
        p.set_defaults(model=model)
    p.add_argument("--data", required=True, help="preprocess output folder or s3:// prefix (or its features/)")
    p.add_argument("--config", type=Path, default=None, help="JSON/YAML overrides, e.g. {\"train\": {\"lr\": 1e-3}, \"ser\": {...}}")
    add_config_options(p, FitConfig)
    add_ray_options(p)


def add_experiment_arguments(p: argparse.ArgumentParser, demo: bool = False) -> None:
    """Options of `emogen experiment` (also `emogen demo` and jobs/augment.py): the input,
    where to write, and one option per ExperimentConfig field, of the same name; an unset
    one takes the preset's "experiment" section, else the field's default."""
    # deferred: the experiment's config loads torch and scipy; `import emogen.cli.main` stays light until a parser is built
    from emogen.experiment.config import ExperimentConfig

    if not demo:
        src = p.add_argument_group("input (one of)")
        src.add_argument("--data", default=None, help="preprocessed features (emogen preprocess output; a folder or s3:// prefix)")
        src.add_argument("--input", action="append",
                         help="corpus folder or s3:// / gs:// prefix to preprocess into STORAGE/data; repeatable")
        src.add_argument("--csv", default=None, help="label CSV (path, emotion, speaker) to preprocess; a file or URI")
        src.add_argument("--dataset", default="auto", choices=["auto", "emodb", "ravdess"])
    p.add_argument("--out", type=Path, default=Path("runs/demo") if demo else Path("runs/experiment"),
                   help="experiment folder (report, results.json; and everything else without --storage-path); "
                        "re-run to resume")
    p.add_argument("--storage-path", default=None,
                   help="where the trainings, generated clips and the resume journal live: a folder or an s3:// / "
                        "gs:// prefix every node reaches (default: --out); credentials from the environment (AWS_*)")
    p.add_argument("--preset", default="demo", help="tiny | demo | paper: model sizes, epochs and experiment defaults")
    p.add_argument("--config", type=Path, default=None,
                   help='JSON/YAML preset overrides, e.g. {"ser": {"dropout": 0.2}, "train_ser": {"epochs": 10}, "train": {"lr": 1e-3}}')
    p.add_argument("--name", default="demo" if demo else None, help="run name prefix (default: the --out folder name)")
    add_config_options(p, ExperimentConfig, unset_means_preset=True)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: local store in runs/mlflow)")
    add_ray_options(p)


def add_corpus_parser(sub: SubParsers) -> None:
    p = sub.add_parser("corpus", help="write the embedded demo corpus (EmoDB- and RAVDESS-style WAVs)")
    p.add_argument("--out", required=True, help="a folder, or an s3:// / gs:// prefix to upload it to")
    p.add_argument("--preset", default="demo", help="tiny | demo | large")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes for synthesis")
    p.set_defaults(func=cmd_corpus)


def add_preprocess_parser(sub: SubParsers) -> None:
    p = sub.add_parser("preprocess", help="corpus folders -> log-mel Parquet with Ray Data")
    p.add_argument("--input", action="append",
                   help="corpus folder or storage prefix (s3://BUCKET/corpus) of audio with EmoDB/RAVDESS names; repeatable")
    p.add_argument("--csv", default=None,
                   help="label CSV with columns path, emotion, speaker (a file or s3:// URI; relative paths are under its folder)")
    p.add_argument("--dataset", default="auto", choices=["auto", "emodb", "ravdess"], help="file-name scheme of --input folders")
    p.add_argument("--output", required=True,
                   help="folder or storage prefix (s3://BUCKET/data) for features/, rejects.csv, summary.json, manifest.csv")
    p.add_argument("--batch-size", type=int, default=None,
                   help="most clips per block (one Ray Data task, one Parquet file; default 128, smaller blocks for "
                        "small corpora)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="blocks featurized at once (default: two per CPU, so none waits for the driver)")
    add_ray_options(p)
    p.set_defaults(func=cmd_preprocess)


def add_train_parser(sub: SubParsers) -> None:
    p = sub.add_parser("train", help="train a model with Ray Train (checkpoints every epoch, resumable)")
    add_train_arguments(p, model=None)
    p.set_defaults(func=cmd_train)


def add_tune_parser(sub: SubParsers) -> None:
    """The sweep's options live beside its code, which registers them."""
    # deferred: emogen.training loads torch; `import emogen.cli.main` (jobs/) stays light until a parser is built
    from emogen.training import sweep

    sweep.add_subcommand(sub)


def add_generate_parser(sub: SubParsers) -> None:
    """`emogen generate`: one option per GenerateConfig field."""
    # deferred: the generation options import emogen.models (torch); only a built parser needs them
    from emogen.inference.config import GenerateConfig

    p = sub.add_parser("generate", help="synthesize clips of an emotion from a diffusion or VAE checkpoint")
    add_config_options(p, GenerateConfig)
    p.set_defaults(func=cmd_generate)


def add_attention_parser(sub: SubParsers) -> None:
    """`emogen attention`: one option per AttentionConfig field."""
    # deferred: the generation options import emogen.models (torch); only a built parser needs them
    from emogen.inference.config import AttentionConfig

    p = sub.add_parser("attention", help="PNG of the diffusion U-Net's self-attention while it generates one clip")
    add_config_options(p, AttentionConfig)
    p.set_defaults(func=cmd_attention)


def add_models_parser(sub: SubParsers) -> None:
    p = sub.add_parser("models", help="the MLflow model registry: versions of a registered model, promote one with an alias")
    models = p.add_subparsers(dest="models_command", required=True)
    q = models.add_parser("promote", help="point an alias (e.g. champion) at a version: serve models:/NAME@ALIAS")
    q.add_argument("name")
    q.add_argument("version")
    q.add_argument("--alias", default="champion")
    q.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
    q.set_defaults(func=cmd_models_promote)
    q = models.add_parser("list", help="the versions of a registered model, their aliases, runs and tags")
    q.add_argument("name")
    q.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
    q.set_defaults(func=cmd_models_list)


def add_experiment_parser(sub: SubParsers) -> None:
    p = sub.add_parser("experiment", help="the augmentation experiment: does generated data improve the SER? (report + MLflow)")
    add_experiment_arguments(p)
    p.set_defaults(func=cmd_experiment)


def add_demo_parser(sub: SubParsers) -> None:
    p = sub.add_parser("demo", help="the embedded demo corpus -> the full augmentation experiment (what `make demo` runs)")
    add_experiment_arguments(p, demo=True)
    p.add_argument("--corpus", default="demo", help="embedded corpus size: tiny | demo | large")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--workers", type=int, default=2, help="processes for corpus synthesis")
    p.set_defaults(func=cmd_demo)


SUBCOMMANDS: tuple[Callable[[SubParsers], object], ...] = (
    add_corpus_parser, add_preprocess_parser, add_train_parser, add_tune_parser, serve_command.add_subcommand,
    add_generate_parser, add_attention_parser, add_models_parser, add_experiment_parser, add_demo_parser,
)  # in the order `emogen --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emogen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one subcommand; its JSON summary is the last line on stdout. A mistake in what
    the user gave (UserError) ends as one `emogen: error: ...` line and exit code 2."""
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    func: Callable[[argparse.Namespace], dict] = args.func
    stop_on_sigterm()
    mark = tracking.runs_mark()
    try:
        summary = func(args)
    except UserError as exc:
        # raised in a Ray task it arrives wrapped, with the remote traceback in its text
        message = " ".join(str(getattr(exc, "cause", None) or exc).split())
        _end_runs("FAILED", message, mark)
        parser.exit(2, f"emogen: error: {message}\n")
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or stop_requested():
            _end_runs("KILLED", "stopped: SIGTERM (`ray job stop`)" if stop_requested() else "stopped: Ctrl-C", mark)
            raise SystemExit(130) from None
        _end_runs("FAILED", f"{type(exc).__name__}: {exc}", mark)
        raise
    _print_summary(summary)


def _end_runs(status: str, reason: str, since: int) -> None:
    ended = tracking.end_open_runs(status, reason, since)
    if ended:
        get_logger("cli").info("MLflow runs ended as %s: %s", status, ", ".join(ended))


if __name__ == "__main__":
    main()
