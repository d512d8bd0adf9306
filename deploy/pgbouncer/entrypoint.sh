#!/bin/bash
# Writes PgBouncer's configuration from the environment and runs it in the foreground.
#
#   DB_HOST, DB_PORT (5432)          the PostgreSQL server
#   DB_USER, DB_PASSWORD or DB_PASSWORD_FILE (a Docker/Kubernetes secret)
#   SERVER_CONNECTIONS (40)          server connections per database: what PostgreSQL sees
#   MAX_CLIENTS (2000)               worker connections the pooler accepts
#   SERVER_LOGIN_RETRY (1)           seconds between logins to a lost server
#
# Transaction pooling: a server connection serves one transaction, then the next client's.
# The workers are built for it: every transaction sets its own timeouts (SET LOCAL), and
# the set-up lock is transaction-scoped (search/storage/locks.py). Clients authenticate with
# SCRAM against the password here; PgBouncer logs in to PostgreSQL with the same one.
set -euo pipefail
: "${DB_HOST:?DB_HOST is not set: the PostgreSQL host PgBouncer pools connections to}"
: "${DB_USER:?DB_USER is not set: the PostgreSQL user the workers connect as}"
if [[ -n "${DB_PASSWORD_FILE:-}" ]]; then
    password=$(<"$DB_PASSWORD_FILE")
else
    password=${DB_PASSWORD:?DB_PASSWORD or DB_PASSWORD_FILE is not set}
fi
config=$(mktemp -d)
# auth_file syntax: "user" "password", a double quote inside doubled.
printf '"%s" "%s"\n' "${DB_USER//\"/\"\"}" "${password//\"/\"\"}" >"$config/users.txt"
cat >"$config/pgbouncer.ini" <<INI
[databases]
* = host=$DB_HOST port=${DB_PORT:-5432}

[pgbouncer]
listen_addr = *
listen_port = 6432
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $config/users.txt
pool_mode = transaction
max_client_conn = ${MAX_CLIENTS:-2000}
listen_backlog = 4096
default_pool_size = ${SERVER_CONNECTIONS:-40}
max_db_connections = ${SERVER_CONNECTIONS:-40}
server_reset_query =
ignore_startup_parameters = extra_float_digits
# After the server is lost (a restart, a failover behind DB_HOST) retry its login every
# second, not every 15 s (the default): bench/failover.py measures the difference.
server_login_retry = ${SERVER_LOGIN_RETRY:-1}
log_connections = 0
log_disconnections = 0
INI
exec pgbouncer "$config/pgbouncer.ini"
