"""The command line's values as the typed settings the layers below take, built once per
command: flags, else their variables, else defaults (``options.resolve``); the storage
URL checked here, before anything else is done. What a study has recorded is merged in
by ``search.study.spec.settle``, once the study is read."""

from __future__ import annotations

import argparse

from sqlalchemy.engine import URL

from objectives.errors import UnknownDataset
from search.cli.parser import dataset_choices
from search.errors import UserError
from search.storage.url import parse_url
from search.study.spec import StudyRequest
from search.worker.config import WorkerConfig


def storage(args: argparse.Namespace) -> URL:
    return parse_url(args.storage)


def study_request(args: argparse.Namespace, data_options: list[str]) -> StudyRequest:
    if args.objective is not None and args.objective not in dataset_choices():
        raise UnknownDataset(args.objective, dataset_choices())
    given = {name: getattr(args, name) for name in data_options if getattr(args, name, None) is not None}
    return StudyRequest(name=args.study, dataset=args.objective, epochs=args.epochs, n_trials=args.n_trials,
                        space_file=args.space, pruner=args.pruner, data_options=given)


def worker_config(args: argparse.Namespace, url: URL) -> WorkerConfig:
    if args.grace_period < 2 * args.heartbeat_interval:
        raise UserError(f"--grace-period {args.grace_period:g} must be at least twice --heartbeat-interval "
                        f"({args.heartbeat_interval:g}), or live workers would be taken for dead; raise --grace-period or "
                        f"lower --heartbeat-interval")
    return WorkerConfig(storage=url, artifacts=args.artifacts, data_dir=args.data_dir, device=args.device,
                        precision=args.precision,
                        seed=args.seed, timeout=args.timeout, heartbeat_interval=args.heartbeat_interval,
                        grace_period=args.grace_period, keep_best=args.keep_best, db_patience=args.db_patience,
                        reply_timeout=args.reply_timeout)
