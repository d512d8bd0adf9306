"""The storage URL: checked once, without connecting, and shown without its password."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from search.errors import UserError

URL_FORMS = "use sqlite:///PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
# libpq's connection keywords: what psycopg2 passes on from a URL's query string.
LIBPQ_OPTIONS = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcompression",
    "sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "gssencmode",
    "krbsrvname", "gsslib", "channel_binding", "connect_timeout", "application_name", "options",
    "target_session_attrs", "passfile", "service", "keepalives", "keepalives_idle",
    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "client_encoding", "host", "hostaddr",
    "load_balance_hosts", "require_auth",
}


def parse_url(url: str) -> URL:
    """The storage URL, checked without connecting: its form, backend, driver, port, options."""
    shown = describe_text(url)
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a port that is not a number raises here
    except (ArgumentError, ValueError):
        raise UserError(f"malformed storage URL {shown!r}; {URL_FORMS}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise UserError(f"unsupported storage URL {shown!r}; {URL_FORMS}")
    if backend == "sqlite":
        if parsed.drivername != "sqlite":
            raise UserError(f"storage URL {shown!r}: driver {parsed.drivername!r} is not supported; use sqlite:///PATH.db")
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file::memory:"):
            raise UserError(f"storage URL {shown!r} names no database file (an in-memory database vanishes "
                            f"when the command ends, and other workers cannot see it); use sqlite:///PATH.db")
        if parsed.query:
            raise UserError(f"storage URL {shown!r}: SQLite URLs take no options here "
                            f"({', '.join(parsed.query)}); use sqlite:///PATH.db")
        return parsed
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; this project connects with psycopg2.
    if parsed.drivername not in ("postgresql", "postgresql+psycopg2"):
        raise UserError(f"storage URL {shown!r}: driver {parsed.drivername.partition('+')[2]!r} is not "
                        f"installed with this project; use postgresql:// (psycopg2)")
    unknown = sorted(set(parsed.query) - LIBPQ_OPTIONS)
    if unknown:
        raise UserError(f"storage URL {shown!r}: {', '.join(unknown)} is not a PostgreSQL connection option; "
                        f"remove it (options: sslmode, connect_timeout, application_name, ...)")
    return parsed.set(drivername="postgresql+psycopg2")


def describe_text(url: str) -> str:
    """A URL as typed, with any password masked, for messages about malformed ones."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not (sep and at and ":" in credentials):
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{location}"


def describe(url: URL) -> str:
    """The URL without its password, for messages."""
    if is_sqlite(url):
        return f"SQLite file {url.database}"
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432} (database {url.database!r})"


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"

