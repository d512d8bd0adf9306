"""``search dashboard``: optuna-dashboard on the storage and the artifact store, read-only.

Started beside a new database (a compose stack, a cluster), it waits, with one line, for
the first worker to create the study storage, and then serves it. A big study shows a cut
of its trials (``search.storage.view``), named in a line per study at startup."""

from __future__ import annotations

import functools
import socket
import time
from typing import Any, BinaryIO

from sqlalchemy.engine import URL

from search.artifacts import open_store
from search.errors import UserError
from search.storage import CutView, NoTablesYet, ResilientStorage, describe, open_storage

WAIT_S = 5.0


class ReadOnlyStore:
    """An Optuna artifact store that only reads: the dashboard's uploads and deletions are
    refused before they touch the store (the storage refuses their records anyway)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        raise PermissionError("search dashboard is read-only")

    def remove(self, artifact_id: str) -> None:
        raise PermissionError("search dashboard is read-only")


def opened_when_ready(storage: URL) -> ResilientStorage:
    """The storage, once it holds Optuna's tables; a new, empty database is waited for."""
    waiting = False
    while True:
        try:
            return open_storage(storage, writable=False)
        except NoTablesYet:
            if not waiting:
                print(f"waiting for the first worker to create the study storage in {describe(storage)} "
                      f"(no tables yet)", flush=True)
                waiting = True
            time.sleep(WAIT_S)


def dashboard(storage: URL, artifacts: str, host: str, port: int, shown: int) -> int:
    from optuna_dashboard import run_server

    try:  # bottle would print a traceback for a taken port
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror}; pass another --port "
                        f"(or --host)") from None
    store = open_store(artifacts)
    store.backend.check(writable=False)
    say = functools.partial(print, flush=True)
    view = CutView(opened_when_ready(storage), shown, say)
    for line in view.describe():
        say(line)
    say(f"optuna-dashboard on http://{host}:{port}/ (read-only)")
    run_server(view, host=host, port=port, artifact_store=ReadOnlyStore(store.backend.optuna))
    return 0
