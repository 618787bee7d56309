#!/usr/bin/env bash
# Project-local PostgreSQL for `make run` and `make test`: Debian server
# binaries, data under var/pg (or $CARRIERD_PGDATA), Unix socket only.
#   scripts/localpg.sh start   start if not running (a no-op when it is)
#   scripts/localpg.sh stop [fast|immediate]   stop if running (default fast)
#   scripts/localpg.sh dsn     print the DSN of the local server
#
# The server holds message bodies and API token hashes, so no other local
# user may reach it: the socket directory belongs to the server user with
# mode 0700, and every connection needs the superuser's password
# (scram-sha-256), generated once into a 0600 file and carried in the DSN.
# A cluster made by an older checkout (trust, open socket) is converted in
# place by `start`.
set -euo pipefail

root_dir=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${CARRIERD_PGDATA:-$root_dir/var/pg}
socket_dir=$data_dir/run
cluster_dir=$data_dir/data
log_file=$data_dir/postgres.log
password_file=$data_dir/password
# Digest of the password and hba layout last applied to the cluster: a
# changed password file or an older layout is applied again at start.
applied_file=$data_dir/password.applied
hba_marker="# carrierd local server: scram-sha-256 over the Unix socket only (v1)"

die() { echo "localpg: $*" >&2; exit 1; }

find_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
    done
    return 1
}

ensure_binaries() {
    if bindir=$(find_bindir); then return 0; fi
    if [ "$(id -u)" -ne 0 ]; then
        die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin.
Install them (as root: apt-get install postgresql) or set CARRIERD_DSN to an existing database."
    fi
    echo "localpg: installing the postgresql package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    # The Debian package starts a system cluster of its own; ours does not need it.
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
            pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
        done
    fi
    bindir=$(find_bindir) || die "postgresql installed but no server binaries found"
}

# PostgreSQL refuses to run as root: as root the server runs as the postgres
# system user, which must be able to reach the data directory.
as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

grant_path_to_postgres() {
    [ "$(id -u)" -eq 0 ] || return 0
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    local dir=$data_dir
    mkdir -p "$dir"
    chown postgres: "$dir"
    # Every ancestor needs search (x) permission for the postgres user; a
    # mktemp -d checkout is 0700, so open only the traversal bit.
    dir=$(dirname "$dir")
    while [ "$dir" != "/" ]; do
        if ! runuser -u postgres -- test -x "$dir"; then chmod o+x "$dir"; fi
        dir=$(dirname "$dir")
    done
}

is_running() {
    [ -f "$cluster_dir/postmaster.pid" ] && as_server_user "$bindir/pg_ctl" -D "$cluster_dir" status >/dev/null 2>&1
}

server_user() { if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi; }

ensure_password() {
    [ -s "$password_file" ] && return 0
    mkdir -p "$data_dir"
    local tmp
    tmp=$(umask 077 && mktemp "$data_dir/.password.XXXXXX")
    # Hex only: it goes into a DSN and an SQL literal without quoting.
    od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$tmp"
    # ln does not replace: when two callers race, the first file wins.
    ln "$tmp" "$password_file" 2>/dev/null || true
    rm -f "$tmp"
}

read_password() {
    [ -r "$password_file" ] || die "cannot read $password_file (made by another user?)"
    cat "$password_file"
}

wanted_digest() { { echo "$hba_marker"; read_password; } | sha256sum | cut -d' ' -f1; }

is_secured() {
    grep -qxF "$hba_marker" "$cluster_dir/pg_hba.conf" 2>/dev/null \
        && [ "$(cat "$applied_file" 2>/dev/null)" = "$(wanted_digest)" ]
}

# Sets the superuser's password and replaces pg_hba.conf, with the server
# stopped: single-user mode needs no authentication, so this also converts
# a cluster whose hba is not trust.
secure_cluster() {
    local password output
    password=$(read_password)
    output=$(printf "SET password_encryption = 'scram-sha-256'\nALTER ROLE postgres PASSWORD '%s'\n" \
        "$password" | as_server_user "$bindir/postgres" --single -D "$cluster_dir" postgres 2>&1) \
        || die "could not set the password in single-user mode: $output"
    as_server_user tee "$cluster_dir/pg_hba.conf" >/dev/null <<HBA
$hba_marker
# TYPE  DATABASE  USER  METHOD
local   all       all   scram-sha-256
HBA
    wanted_digest >"$applied_file"
    chmod 0600 "$applied_file"
}

check_login() {
    PGPASSWORD=$(read_password) PGCONNECT_TIMEOUT=10 "$bindir/psql" -X -q -A -t \
        -h "$socket_dir" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1
}

cmd_start() {
    ensure_binaries
    grant_path_to_postgres
    mkdir -p "$data_dir"
    ensure_password
    if [ ! -f "$cluster_dir/PG_VERSION" ]; then
        as_server_user mkdir -p "$cluster_dir" "$socket_dir"
        # Trust only until secure_cluster below replaces pg_hba.conf, before
        # the server first starts.
        as_server_user "$bindir/initdb" -D "$cluster_dir" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 >/dev/null 2>&1 \
            || as_server_user "$bindir/initdb" -D "$cluster_dir" -U postgres --auth=trust \
                --encoding=UTF8 --no-locale >/dev/null
        cat >>"$cluster_dir/postgresql.conf" <<CONF
# carrierd local server: Unix socket only
listen_addresses = ''
unix_socket_directories = '$socket_dir'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
CONF
    fi
    as_server_user mkdir -p "$socket_dir"
    as_server_user chmod 0700 "$socket_dir"
    if ! is_secured; then
        if is_running; then
            echo "localpg: restarting the server to require a password" >&2
            as_server_user "$bindir/pg_ctl" -D "$cluster_dir" -m fast -w stop >/dev/null
        fi
        secure_cluster
    fi
    if ! is_running; then
        as_server_user "$bindir/pg_ctl" -D "$cluster_dir" -l "$log_file" -w -t 60 start >/dev/null \
            || { tail -20 "$log_file" >&2; die "PostgreSQL did not start (log: $log_file)"; }
    fi
    check_login || die "the server does not accept the password in $password_file"
}

cmd_stop() {
    local mode=${1:-fast}
    case "$mode" in fast | immediate) ;; *) die "stop mode must be fast or immediate" ;; esac
    bindir=$(find_bindir) || return 0
    [ -d "$cluster_dir" ] || return 0
    if is_running; then as_server_user "$bindir/pg_ctl" -D "$cluster_dir" -m "$mode" -w stop >/dev/null; fi
}

cmd_dsn() {
    ensure_password
    echo "postgresql://postgres:$(read_password)@/postgres?host=$socket_dir"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop "${2:-fast}" ;;
    dsn) cmd_dsn ;;
    *) die "usage: $0 start|stop [fast|immediate]|dsn" ;;
esac
