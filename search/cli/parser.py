"""The ``search`` command line: its commands and options.

Every option can also come from an environment variable (``SEARCH_<OPTION>``), which is
how containers are configured (``search.cli.options``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from objectives.datasets import names as dataset_names
from search.cli import options
from search.cli.options import OneLineParser, add
from objectives.training.device import PRECISIONS
from search.storage.connection import REPLY_TIMEOUT_S
from search.study.spec import DEFAULT_BUDGET, DEFAULT_DATASET, DEFAULT_EPOCHS, DEFAULT_PRUNER, PRUNERS

# The commands that read data (--data-dir); run and worker also take each data set's own
# options (a table's --label), which are only known by importing the data sets.
DATA_OPTION_COMMANDS = ("run", "worker")


def dataset_choices() -> list[str]:
    """The data sets, the default first."""
    return [DEFAULT_DATASET, *(name for name in dataset_names() if name != DEFAULT_DATASET)]


def add_common(parser: argparse.ArgumentParser, command: str, *names: str) -> None:
    if "study" in names:
        add(parser, command, "--study", "STUDY", "study name (default: the --objective's name if given; else "
            f"the storage's only study, or in an empty storage a new one, {DEFAULT_DATASET})"
            if command in DATA_OPTION_COMMANDS else "study name (default: the storage's only study)",
            convert=options.study_name)
    if "storage" in names:
        add(parser, command, "--storage", "STORAGE", "study storage URL: sqlite:///FILE.db or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB", default=options.DEFAULT_STORAGE)
    if "artifacts" in names:
        add(parser, command, "--artifacts", "ARTIFACTS", "where checkpoints and weights go: a directory every "
            "worker shares, or an object store bucket, s3://BUCKET/PREFIX (endpoint and credentials from the AWS_* "
            "variables)", default=options.DEFAULT_ARTIFACTS)
    if "data" in names:
        add(parser, command, "--data-dir", "DATA_DIR", "the data set's directory (or file); default: each data "
            "set's own place (see README)")
    if "device" in names:
        add(parser, command, "--device", "DEVICE", "auto, cpu, cuda or cuda:N (auto: GPU worker-index mod GPUs)",
            default="auto")
        add(parser, command, "--precision", "PRECISION", "what training multiplies in: float32, bfloat16 (weights "
            "stay float32) or auto: bfloat16 where the device is faster at it (recent GPUs, CPUs with AMX or "
            "AVX-512 BF16)", convert=options.choice(*PRECISIONS), default="auto")


def add_work(commands: argparse._SubParsersAction, name: str, help_text: str, data_options: Sequence) -> None:
    command = commands.add_parser(name, help=help_text)
    add(command, name, "--objective", "OBJECTIVE", f"the data set: {', '.join(dataset_choices())} (default: the "
        f"study's; {DEFAULT_DATASET} for a new study)")
    add_common(command, name, "study", "storage", "artifacts", "data", "device")
    add(command, name, "--n-trials", "N_TRIALS", "study-wide trial budget, counted over all workers; raises "
        f"an existing study's (default: the study's own; {DEFAULT_BUDGET} for a new study)",
        convert=options.positive_int)
    add(command, name, "--epochs", "EPOCHS", "epochs per trial (default: the study's; "
        f"{DEFAULT_EPOCHS} for a new study)", convert=options.positive_int)
    add(command, name, "--timeout", "TIMEOUT", "stop claiming new trials after this many seconds",
        convert=options.seconds)
    add(command, name, "--seed", "SEED", f"base seed 0..{options.MAX_SEED}; worker k's sampler uses seed + k",
        convert=options.seed, default=0)
    add(command, name, "--heartbeat-interval", "HEARTBEAT_INTERVAL",
        "seconds between a running trial's heartbeats", convert=options.seconds, default=10)
    add(command, name, "--grace-period", "GRACE_PERIOD", "a trial whose heartbeat is older than this many "
        "seconds is failed and retried", convert=options.seconds, default=90)
    add(command, name, "--db-patience", "DB_PATIENCE", "seconds to keep reconnecting to a lost database (and "
        "retrying an unavailable artifact store)",
        convert=options.seconds, default=300)
    add(command, name, "--reply-timeout", "REPLY_TIMEOUT", "seconds the database or the object store may leave a "
        "request unanswered before its connection counts as lost and is reconnected (raise it for a slow link)",
        convert=options.seconds_from(1), default=int(REPLY_TIMEOUT_S))
    add(command, name, "--keep-best", "KEEP_BEST", "keep final weights of only the best K trials",
        convert=options.positive_int, default=5)
    add(command, name, "--pruner", "PRUNER", "median (stop a trial below the median of earlier trials at "
        "the same epoch), hyperband or successive-halving (Optuna's; default: the study's, "
        f"{DEFAULT_PRUNER} for a new study)", convert=options.choice(*PRUNERS))
    add(command, name, "--space", "SPACE", "search space file (TOML; default: the study's, or for a new "
        "study the one shipped in objectives/space.toml)")
    for option in data_options:
        add(command, name, f"--{option.name}", option.name.upper(), f"{option.help} (default: the study's)",
            metavar=option.metavar)


def add_readers(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="table of a study's trials")
    add_common(status, "status", "study", "storage")

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on the storage (read-only)")
    add_common(dashboard, "dashboard", "storage", "artifacts")
    add(dashboard, "dashboard", "--host", "DASHBOARD_HOST", "address to listen on", default="127.0.0.1")
    add(dashboard, "dashboard", "--port", "DASHBOARD_PORT", "port to listen on", convert=options.port,
        default=8080)
    add(dashboard, "dashboard", "--view-trials", "DASHBOARD_VIEW_TRIALS", "a study of more than 3 N trials shows "
        "its N best, its unfinished and its N latest, so that its page loads in seconds (every trial: search "
        "report)", convert=options.whole(1), default=options.DEFAULT_VIEW_TRIALS, metavar="N")

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


def build_parser(data_options: Sequence = ()) -> argparse.ArgumentParser:
    """The parser; ``data_options``: the data sets' own options (``objectives.datasets.options``)."""
    parser = OneLineParser(prog="search", description="Distributed hyperparameter search "
                           "for PyTorch MLP classifiers on one shared Optuna study.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and Optuna's log")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_work(commands, "run", "run a whole study here and print a summary", data_options)
    add_work(commands, "worker", "join a shared study and work until its budget is done", data_options)
    add_readers(commands)
    return parser
