"""The ``search`` command line: run, worker, status, dashboard, best, report, evaluate.

Bad input ends with one ``search: error: ...`` line and exit status 2, before anything
is created or written; ``status``, ``best`` (without ``--retrain``), ``report`` and
``dashboard`` only ever read. Exit statuses are decided here alone, from the type of
what ended the command (``exit_status``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from search.cli import options
from search.cli.parser import DATA_OPTION_COMMANDS, build_parser
from search.errors import SearchError, UserError
from search.worker.signals import WorkerStopped, silence_stdout


def exit_status(error: BaseException) -> int | None:
    """0 done; 1 something failed that may pass later (the database stayed away); 2 bad
    input, or something a person must fix (orchestrators should not restart on 2);
    128 + N stopped by signal N (the running trial was re-queued). None: a bug, shown
    with its traceback."""
    if isinstance(error, WorkerStopped):
        return 128 + error.signum
    if isinstance(error, UserError):
        return 2
    if isinstance(error, SearchError):
        return 1
    if isinstance(error, ValueError):
        # The data sets' and exported files' own errors (torch is loaded only if the command
        # got that far, so these are imported here, not for every command).
        from models.exported import ExportedModelError
        from objectives.errors import InputError

        if isinstance(error, (InputError, ExportedModelError)):
            return 2
    return None


def loaded(verbose: bool) -> None:
    """The command's modules are loaded: Optuna's logging set, if the command loaded Optuna
    (``status`` and ``best`` read without it); and from here on collect garbage, but never
    walk again what the imports made (``entry_point`` paused the collector while they loaded)."""
    if "optuna" in sys.modules:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def dispatch(args: argparse.Namespace, data_options: list[str]) -> int:
    """Run the command with its settings, each resolved once."""
    from search.cli import settings  # the storage's modules: after a usage error, none is loaded

    options.resolve(args)
    command = args.command
    if command == "evaluate":
        from search.commands.evaluate import evaluate

        loaded(args.verbose)
        return evaluate(args.path, args.data_dir, args.json)
    url = settings.storage(args)
    if command in ("run", "worker"):
        from search.commands.work import work

        loaded(args.verbose)
        name = work(settings.worker_config(args, url), settings.study_request(args, data_options))
        if command == "worker":
            return 0
        args.study = name  # run: then the study's status, and how to export its best model
    if command in ("run", "status"):
        from search.commands.status import status

        loaded(args.verbose)
        status(url, args.study)
        if command == "run":
            print(f"export the best model: search best --study {args.study} --storage {args.storage} "
                  f"--artifacts {args.artifacts} --export model.pt")
        return 0
    if command == "dashboard":
        from search.commands.dashboard import dashboard

        loaded(args.verbose)
        return dashboard(url, args.artifacts, args.host, args.port, args.view_trials)
    if command == "best":
        if args.retrain and args.export is None:
            raise UserError("--retrain needs somewhere to write the retrained model; add --export PATH")
        if args.force and args.export is None:
            raise UserError("--force only applies to --export; add --export PATH or drop --force")
        from search.commands.best import best

        if args.export is not None:
            importlib.import_module("search.commands.best_model")  # torch and Optuna: with the rest
        loaded(args.verbose)
        return best(url, args.study, args.artifacts, args.data_dir, args.device, args.precision, args.json,
                    args.export, args.force, args.retrain)
    from search.commands.report import report

    loaded(args.verbose)
    return report(url, args.study, args.out)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The parsed command line, and the names of the data sets' own options it has."""
    parser, data_options = build_parser(), []
    command = next((word for word in argv if not word.startswith("-")), None)
    if command in DATA_OPTION_COMMANDS and may_name_data_options(parser, argv, command):
        from objectives.datasets import options as dataset_options  # imports every data set (torch)

        data_options = dataset_options()
        parser = build_parser(data_options)
    return parser.parse_args(argv), [option.name for option in data_options]


def may_name_data_options(parser: argparse.ArgumentParser, argv: Sequence[str], command: str) -> bool:
    """Whether ``argv`` or the environment may hold a data set's own option (``--label``,
    ``SEARCH_LABEL``), or asks for help: only then are the data sets imported to learn their
    options (torch, pandas: seconds), so a mistyped number fails at once."""
    if "-h" in argv or "--help" in argv:
        return True
    if parser.parse_known_args(argv)[1]:
        return True
    known = {source.variable for source in options.FROM_ENV[command].values()}
    return any(name.startswith("SEARCH_") and name.removesuffix("_FILE") not in known for name in os.environ)


def entry_point() -> NoReturn:
    """The ``search`` command: ``main`` with the garbage collector paused while the command's
    modules load (imports make hundreds of thousands of objects, and each collection walks
    them: a sixth of a one-second ``search status``; ``loaded`` resumes it), then exit
    without the interpreter's last collections, which walk every object optuna, SQLAlchemy
    and torch made (about 0.2 s more); exit handlers still run."""
    gc.disable()
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, data_options = parse(sys.argv[1:] if argv is None else argv)
        configure_logging(args.verbose)
        code = dispatch(args, data_options)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except WorkerStopped as stop:
        print(f"search: stopped by {stop}; the current trial was re-queued", file=sys.stderr)
        return exit_status(stop)
    except KeyboardInterrupt:
        print("search: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:  # `search status | head -1`: the reader had enough, as for any Unix tool
        silence_stdout()
        return 128 + signal.SIGPIPE
    except Exception as error:
        code = exit_status(error)
        if code is None:
            raise
        print(f"search: error: {error}", file=sys.stderr)
        return code


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING if verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # Library warnings (Optuna's experimental APIs, torch's notes) are not the user's
        # to act on; -v shows them.
        warnings.simplefilter("ignore")
