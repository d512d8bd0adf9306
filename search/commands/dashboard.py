"""``search dashboard``: optuna-dashboard on the storage and the artifact store, read-only."""

from __future__ import annotations

import socket

from sqlalchemy.engine import URL

from search.artifacts import open_store
from search.errors import UserError
from search.storage import open_storage


def dashboard(storage: URL, artifacts: str, host: str, port: int) -> int:
    from optuna_dashboard import run_server

    try:  # bottle would print a traceback for a taken port
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror}; pass another --port "
                        f"(or --host)") from None
    opened = open_storage(storage, writable=False)
    print(f"optuna-dashboard on http://{host}:{port}/ (read-only)", flush=True)
    run_server(opened, host=host, port=port, artifact_store=open_store(artifacts).backend.optuna)
    return 0
