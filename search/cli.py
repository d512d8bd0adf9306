"""The ``search`` command line: run, worker, status, dashboard, best, evaluate.

Every option can also come from an environment variable (``SEARCH_<OPTION>``), which is
how containers are configured. Bad input ends with one ``search: error: ...`` line and
exit status 2, before anything is created or written; ``status``, ``best`` (without
``--retrain``) and ``dashboard`` only ever read.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from collections.abc import Sequence

from search import options
from search.errors import UserError
from search.options import OneLineParser, add
from search.pruners import PRUNERS

MAX_STUDY_NAME = 512  # Optuna's column for study names


def study_name(value: str) -> str:
    value = options.text(value)
    if len(value) > MAX_STUDY_NAME:
        raise argparse.ArgumentTypeError(f"is {len(value)} characters long; the storage keeps at most "
                                         f"{MAX_STUDY_NAME}")
    if not value.isprintable():
        raise argparse.ArgumentTypeError(f"{value!r} holds control characters")
    return value


def add_common(parser: argparse.ArgumentParser, command: str, *names: str) -> None:
    if "study" in names:
        add(parser, command, "--study", "STUDY", "study name (default: the --objective's name if given; else "
            "the storage's only study, or in an empty storage a new one, fashion_mnist)"
            if command in ("run", "worker") else "study name (default: the storage's only study)",
            convert=study_name)
    if "storage" in names:
        add(parser, command, "--storage", "STORAGE", "study storage URL: sqlite:///FILE.db or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB", default=options.DEFAULT_STORAGE)
    if "artifacts" in names:
        add(parser, command, "--artifacts", "ARTIFACTS", "artifact directory every worker shares (checkpoints "
            "and weights)", default=options.DEFAULT_ARTIFACTS)
    if "data" in names:
        add(parser, command, "--data-dir", "DATA_DIR", "dataset directory (Fashion-MNIST IDX .gz files; "
            "covtype.data.gz or a scikit-learn covtype cache)")
    if "device" in names:
        add(parser, command, "--device", "DEVICE", "auto, cpu, cuda or cuda:N (auto: GPU worker-index mod GPUs)",
            default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="search", description="Distributed hyperparameter search "
                           "for PyTorch MLP classifiers on one shared Optuna study.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and Optuna's log")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    for name, help_text in (("run", "run a whole study here and print a summary"),
                            ("worker", "join a shared study and work until its budget is done")):
        command = commands.add_parser(name, help=help_text)
        add(command, name, "--objective", "OBJECTIVE", "fashion_mnist or covtype (default: the study's; "
            f"{options.DEFAULT_OBJECTIVE} for a new study)")
        add_common(command, name, "study", "storage", "artifacts", "data", "device")
        add(command, name, "--n-trials", "N_TRIALS", "study-wide trial budget, counted over all workers; raises "
            f"an existing study's (default: the study's own; {options.DEFAULT_BUDGET} for a new study)",
            convert=options.positive_int)
        add(command, name, "--epochs", "EPOCHS", "epochs per trial (default: the study's; "
            f"{options.DEFAULT_EPOCHS} for a new study)", convert=options.positive_int)
        add(command, name, "--timeout", "TIMEOUT", "stop claiming new trials after this many seconds",
            convert=options.seconds)
        add(command, name, "--seed", "SEED", f"base seed 0..{options.MAX_SEED}; worker k's sampler uses seed + k",
            convert=options.seed, default=0)
        add(command, name, "--heartbeat-interval", "HEARTBEAT_INTERVAL",
            "seconds between a running trial's heartbeats", convert=options.seconds, default=10)
        add(command, name, "--grace-period", "GRACE_PERIOD", "a trial whose heartbeat is older than this many "
            "seconds is failed and retried", convert=options.seconds, default=90)
        add(command, name, "--db-patience", "DB_PATIENCE", "seconds to keep reconnecting to a lost database",
            convert=options.seconds, default=300)
        add(command, name, "--keep-best", "KEEP_BEST", "keep final weights of only the best K trials",
            convert=options.positive_int, default=5)
        add(command, name, "--pruner", "PRUNER", "median (stop a trial below the median of earlier trials at "
            "the same epoch), hyperband or successive-halving (Optuna's; default: the study's, median for a new "
            "study)", convert=options.choice(*PRUNERS))
        add(command, name, "--space", "SPACE", "search space file (TOML; default: the study's, or for a new "
            "study the one shipped in objectives/space.toml)")

    status = commands.add_parser("status", help="table of a study's trials")
    add_common(status, "status", "study", "storage")

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on the storage (read-only)")
    add_common(dashboard, "dashboard", "storage", "artifacts")
    add(dashboard, "dashboard", "--host", "DASHBOARD_HOST", "address to listen on", default="127.0.0.1")
    add(dashboard, "dashboard", "--port", "DASHBOARD_PORT", "port to listen on", convert=options.port,
        default=8080)

    best = commands.add_parser("best", help="show the best trial; --export writes its model file")
    add_common(best, "best", "study", "storage", "artifacts", "data", "device")
    best.add_argument("--json", action="store_true", help="print the best trial as JSON")
    best.add_argument("--export", metavar="PATH", type=options.text, help="write the best model to PATH: .pt "
                      "(state_dict + hyperparameters) or .pt2 (a torch.export program that needs only torch)")
    best.add_argument("--force", action="store_true", help="let --export replace a file that is not a model "
                      "exported by search")
    best.add_argument("--retrain", action="store_true",
                      help="retrain the best hyperparameters on train+validation and measure test accuracy")

    report = commands.add_parser("report", help="the study as a self-contained HTML page, PNG plots and a CSV")
    add_common(report, "report", "study", "storage")
    report.add_argument("--out", metavar="DIR", type=options.text,
                        help="directory to write into (default report-STUDY; created if missing)")

    evaluate = commands.add_parser("evaluate", help="test-set accuracy of an exported model file")
    evaluate.add_argument("path", type=options.text, help="an exported .pt file")
    add_common(evaluate, "evaluate", "data")
    evaluate.add_argument("--json", action="store_true")
    return parser


def command_work(args: argparse.Namespace) -> int:
    from search.database import parse_url

    parse_url(args.storage)  # before the slow imports below: a typo in the URL is the commonest mistake

    from objectives import OBJECTIVES, UnknownObjective
    from search.training import check_device
    from search.worker import WorkerConfig, run_worker

    if args.objective is not None and args.objective not in OBJECTIVES:
        raise UnknownObjective(args.objective)
    if args.grace_period < 2 * args.heartbeat_interval:
        raise UserError(f"--grace-period {args.grace_period:g} must be at least twice --heartbeat-interval "
                        f"({args.heartbeat_interval:g}), or live workers would be taken for dead; raise --grace-period or "
                        f"lower --heartbeat-interval")
    check_device(args.device)
    config = WorkerConfig(
        storage=args.storage, study=args.study, objective=args.objective,
        epochs=args.epochs, n_trials=args.n_trials, data_dir=args.data_dir, artifacts=args.artifacts,
        device=args.device, seed=args.seed, timeout=args.timeout, heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period, keep_best=args.keep_best, db_patience=args.db_patience,
        space=args.space, pruner=args.pruner,
    )
    worker = run_worker(config, say=lambda line: print(line, flush=True))
    if args.command == "run":
        from search.status import study_report

        print(study_report(worker.study, worker.slots.progress()))
        print(f"export the best model: search best --study {worker.config.study} --storage {args.storage} "
              f"--artifacts {args.artifacts} --export model.pt")
    return 0


def command_status(args: argparse.Namespace) -> int:
    from search.status import study_report
    from search.storage import open_storage
    from search.study import load_existing

    storage = open_storage(args.storage, writable=False)
    study = load_existing(storage, args.study)
    print(study_report(study, storage.slots(study).progress()))
    return 0


def command_dashboard(args: argparse.Namespace) -> int:
    import socket

    from optuna_dashboard import run_server

    from search.artifacts import ArtifactDirectory
    from search.storage import open_storage

    try:  # bottle would print a traceback for a taken port
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {error.strerror}; pass another --port "
                        f"(or --host)") from None
    storage = open_storage(args.storage, writable=False)
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (read-only)", flush=True)
    run_server(storage, host=args.host, port=args.port, artifact_store=ArtifactDirectory(args.artifacts).store)
    return 0


def command_best(args: argparse.Namespace) -> int:
    if args.retrain and args.export is None:
        raise UserError("--retrain needs somewhere to write the retrained model; add --export PATH")
    if args.force and args.export is None:
        raise UserError("--force only applies to --export; add --export PATH or drop --force")
    from search.export import command_best as best

    return best(args)


def command_report(args: argparse.Namespace) -> int:
    from search.report import command_report as report

    return report(args)


def command_evaluate(args: argparse.Namespace) -> int:
    from search.export import command_evaluate as evaluate

    return evaluate(args)


HANDLERS = {"run": command_work, "worker": command_work, "status": command_status,
            "dashboard": command_dashboard, "best": command_best, "report": command_report,
            "evaluate": command_evaluate}


def run(args: argparse.Namespace) -> int:
    options.resolve(args)
    return HANDLERS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    from search.signals import WorkerStopped, silence_stdout

    try:
        args = build_parser().parse_args(argv)
        configure_logging(args.verbose)
        code = run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except WorkerStopped as stop:
        print(f"search: stopped by {stop}; the current trial was re-queued", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("search: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `search status | head -1`: the reader had enough, as for any Unix tool
        silence_stdout()
        return 128 + signal.SIGPIPE
    except Exception as error:
        # SearchError, and the data and model packages' own errors, carry their exit status.
        if getattr(error, "exit_code", None) is None:
            raise
        print(f"search: error: {error}", file=sys.stderr)
        return error.exit_code


def configure_logging(verbose: bool) -> None:
    import optuna

    logging.basicConfig(level=logging.WARNING if verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # Library warnings (Optuna's experimental APIs, torch's notes) are not the user's
        # to act on; -v shows them.
        warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
