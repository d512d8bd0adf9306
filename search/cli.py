"""The ``search`` command line: run, worker, status, dashboard, best, evaluate.

Every option can also come from an environment variable (``SEARCH_<OPTION>``), which is
how containers are configured. Bad input ends with one ``search: error: ...`` line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from search.errors import SearchError, UserError

def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SEARCH_{name}", default)


def env_int(name: str, default: int | None) -> int | None:
    value = env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"SEARCH_{name}={value!r} is not an integer") from None


def env_float(name: str, default: float | None) -> float | None:
    value = env(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise UserError(f"SEARCH_{name}={value!r} is not a number") from None


def add_storage(parser: argparse.ArgumentParser) -> None:
    from search.database import DEFAULT_STORAGE

    parser.add_argument("--storage", default=env("STORAGE", DEFAULT_STORAGE),
                        help="study storage URL: sqlite:///FILE.db (default %(default)s) or "
                             "postgresql://USER:PASSWORD@HOST:PORT/DB [SEARCH_STORAGE]")


def add_study(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--study", default=env("STUDY"), required=required and env("STUDY") is None,
                        help="study name (default: the objective's name) [SEARCH_STUDY]")


def add_artifacts(parser: argparse.ArgumentParser) -> None:
    from search.artifacts import DEFAULT_ARTIFACTS

    parser.add_argument("--artifacts", default=env("ARTIFACTS", DEFAULT_ARTIFACTS),
                        help="shared artifact directory for checkpoints and weights [SEARCH_ARTIFACTS]")


def add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=env("DATA_DIR"),
                        help="dataset directory (Fashion-MNIST IDX .gz files; covtype.data.gz or a "
                             "scikit-learn covtype cache) [SEARCH_DATA_DIR]")
    parser.add_argument("--device", default=env("DEVICE", "auto"),
                        help="auto, cpu, cuda or cuda:N (auto: GPU worker-index mod GPUs) [SEARCH_DEVICE]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search", description="Distributed hyperparameter search "
                                     "for PyTorch MLP classifiers on one shared Optuna study.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Optuna's own log lines")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, help_text in (("run", "run a whole study here and print a summary"),
                            ("worker", "join a shared study and work until its budget is done")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--objective", default=env("OBJECTIVE", "fashion_mnist"),
                             help="fashion_mnist or covtype [SEARCH_OBJECTIVE]")
        add_study(command)
        add_storage(command)
        add_artifacts(command)
        add_data(command)
        command.add_argument("--n-trials", type=int, default=env_int("N_TRIALS", 20),
                             help="study-wide trial budget, counted over all workers [SEARCH_N_TRIALS]")
        command.add_argument("--epochs", type=int, default=env_int("EPOCHS", 10),
                             help="epochs per trial [SEARCH_EPOCHS]")
        command.add_argument("--timeout", type=float, default=env("TIMEOUT"),
                             help="stop claiming new trials after this many seconds [SEARCH_TIMEOUT]")
        command.add_argument("--seed", type=int, default=env_int("SEED", 0),
                             help="base seed; worker k's sampler uses seed + k [SEARCH_SEED]")
        command.add_argument("--heartbeat-interval", type=float, default=env_float("HEARTBEAT_INTERVAL", 10),
                             help="seconds between a running trial's heartbeats [SEARCH_HEARTBEAT_INTERVAL]")
        command.add_argument("--grace-period", type=float, default=env_float("GRACE_PERIOD", 90),
                             help="a trial whose heartbeat is older than this is failed and retried; "
                                  "covers network blips of a worker up to about this long [SEARCH_GRACE_PERIOD]")
        command.add_argument("--db-patience", type=float, default=env_float("DB_PATIENCE", 300),
                             help="seconds to keep reconnecting to a lost database before giving up "
                                  "[SEARCH_DB_PATIENCE]")
        command.add_argument("--keep-best", type=int, default=env_int("KEEP_BEST", 5),
                             help="keep final weights of only the best K trials [SEARCH_KEEP_BEST]")

    status = commands.add_parser("status", help="table of a study's trials")
    add_study(status, required=True)
    add_storage(status)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on the storage")
    add_storage(dashboard)
    add_artifacts(dashboard)
    dashboard.add_argument("--host", default=env("DASHBOARD_HOST", "127.0.0.1"))
    dashboard.add_argument("--port", type=int, default=env_int("DASHBOARD_PORT", 8080))

    from search.export import add_best_and_evaluate

    add_best_and_evaluate(commands, add_study, add_storage, add_artifacts, add_data)
    return parser


def command_work(args: argparse.Namespace) -> int:
    from objectives import OBJECTIVES, UnknownObjective
    from search.status import study_report
    from search.worker import WorkerConfig, run_worker

    if args.objective not in OBJECTIVES:
        raise UnknownObjective(args.objective)
    for option in ("n_trials", "epochs", "heartbeat_interval", "keep_best"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be at least 1")
    if args.grace_period < 2 * args.heartbeat_interval:
        raise UserError(f"--grace-period {args.grace_period:g} must be at least twice --heartbeat-interval "
                        f"({args.heartbeat_interval:g}), or live workers would be taken for dead")
    config = WorkerConfig(
        storage=args.storage, study=args.study or args.objective, objective=args.objective,
        epochs=args.epochs, n_trials=args.n_trials, data_dir=args.data_dir, artifacts=args.artifacts,
        device=args.device, seed=args.seed, timeout=float(args.timeout) if args.timeout else None,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period, keep_best=args.keep_best,
        db_patience=args.db_patience,
    )
    study = run_worker(config, say=lambda line: print(line, flush=True))
    if args.command == "run":
        from search.storage import open_storage

        print(study_report(study, open_storage(args.storage).slots(study).progress()))
        print(f"export the best model: search best --study {config.study} --storage {args.storage} "
              f"--artifacts {args.artifacts} --export model.pt")
    return 0


def command_status(args: argparse.Namespace) -> int:
    from search.status import study_report
    from search.storage import open_storage
    from search.study import load_existing

    storage = open_storage(args.storage)
    study = load_existing(storage, args.study)
    print(study_report(study, storage.slots(study).progress()))
    return 0


def command_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from search.artifacts import ArtifactDirectory
    from search.storage import open_storage

    storage = open_storage(args.storage)
    print(f"optuna-dashboard on http://{args.host}:{args.port}/", flush=True)
    run_server(storage, host=args.host, port=args.port, artifact_store=ArtifactDirectory(args.artifacts).store)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from models import ExportedModelError
    from objectives import DataError, UnknownObjective
    from search.signals import WorkerStopped

    try:
        args = build_parser().parse_args(argv)
        configure_logging(args.verbose)
        handler = {"run": command_work, "worker": command_work, "status": command_status,
                   "dashboard": command_dashboard}.get(args.command) or args.handler
        return handler(args)
    except SearchError as error:
        print(f"search: error: {error}", file=sys.stderr)
        return error.exit_code
    except (DataError, UnknownObjective, ExportedModelError) as error:
        print(f"search: error: {error}", file=sys.stderr)
        return 2
    except WorkerStopped as stop:
        print(f"search: stopped by {stop}; the current trial was re-queued", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        return 130


def configure_logging(verbose: bool) -> None:
    import optuna

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
