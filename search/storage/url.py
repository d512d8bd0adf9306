"""The storage URL: checked once, without connecting, and shown without its password.

A PostgreSQL URL may name several hosts, as a replicated pair (Patroni, a managed
database's failover) is reached: libpq's form, ``postgresql://U:P@db1:5432,db2:5432/DB``,
or SQLAlchemy's, ``postgresql://U:P@/DB?host=db1:5432&host=db2:5432``, usually with
``target_session_attrs=read-write`` so that only the primary is used. Both become
SQLAlchemy's form, which psycopg2 hands to libpq as its host and port lists: libpq tries
the hosts in order until one takes the session.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from search.errors import UserError

URL_FORMS = ("use sqlite:///PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DATABASE (several hosts: "
             "HOST1:PORT1,HOST2:PORT2)")
# libpq's values of target_session_attrs (PostgreSQL 14 and newer).
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
_LIBPQ_HOSTS = re.compile(r"^(?P<scheme>[^:/]+://)(?P<credentials>[^@/]*@)?(?P<hosts>[^/?]*,[^/?]*)(?P<rest>[/?].*|)$")
# libpq's connection keywords: what psycopg2 passes on from a URL's query string.
LIBPQ_OPTIONS = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcompression",
    "sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "gssencmode",
    "krbsrvname", "gsslib", "channel_binding", "connect_timeout", "application_name", "options",
    "target_session_attrs", "passfile", "service", "keepalives", "keepalives_idle",
    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "client_encoding", "host", "hostaddr",
    "load_balance_hosts", "require_auth",
}


def with_hosts_in_query(url: str) -> str:
    """libpq's several-host form as SQLAlchemy's: the hosts move into ``host=`` options."""
    match = _LIBPQ_HOSTS.match(url)
    if match is None:
        return url
    path, _, query = match["rest"].partition("?")
    listed = match["hosts"].split(",")
    if not all(host.strip() for host in listed):
        raise UserError(f"storage URL {describe_text(url)!r} names an empty host ({match['hosts']!r}); list each "
                        f"host as HOST or HOST:PORT, separated by commas")
    hosts = "&".join(f"host={host}" for host in listed)
    return f"{match['scheme']}{match['credentials'] or ''}{path or '/'}?{hosts}{'&' + query if query else ''}"


def split_host(entry: str) -> tuple[str, str]:
    """``HOST:PORT``, ``HOST``, ``[IPv6]:PORT`` or ``[IPv6]`` as (host, port text or "")."""
    host, colon, port = entry.rpartition(":")
    if not colon or entry.endswith("]") or (host.count(":") and not host.endswith("]")):
        return entry, ""  # no port, or a bare IPv6 address
    return host, port


def hosts(url: URL) -> list[tuple[str, int]]:
    """The PostgreSQL hosts a URL names, each with its port (5432 when not given)."""
    listed = url.query.get("host")
    if listed is None:
        return [(url.host or "localhost", url.port or 5432)]
    found = []
    for entry in (listed,) if isinstance(listed, str) else listed:
        host, port = split_host(entry)
        found.append((host, int(port) if port else url.port or 5432))
    return found


def check_hosts(url: URL, shown: str) -> None:
    listed = url.query.get("host")
    entries = () if listed is None else (listed,) if isinstance(listed, str) else listed
    for entry in entries:
        host, port = split_host(entry)
        if not host.strip():
            raise UserError(f"storage URL {shown!r} names an empty host ({entry!r}); list each host as HOST or "
                            f"HOST:PORT, separated by commas")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise UserError(f"storage URL {shown!r}: host {host!r} has port {port!r}, not a number from 1 to "
                            f"65535; fix it")
    attrs = url.query.get("target_session_attrs")
    if attrs is not None and attrs not in SESSION_ATTRS:
        raise UserError(f"storage URL {shown!r}: target_session_attrs={attrs!r} is not one of "
                        f"{', '.join(SESSION_ATTRS)}; use read-write to reach the primary of a replicated pair")


def parse_url(url: str) -> URL:
    """The storage URL, checked without connecting: its form, backend, driver, hosts,
    ports, options."""
    shown = describe_text(url)
    try:
        parsed = make_url(with_hosts_in_query(url))
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
    check_hosts(parsed, shown)
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
    where = ",".join(f"{host}:{port}" for host, port in hosts(url))
    return f"PostgreSQL at {where} (database {url.database!r})"


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"

