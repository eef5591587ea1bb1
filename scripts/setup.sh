#!/usr/bin/env bash
# Set up a fedlab checkout: the virtualenv, its packages, and (unless --no-servers) the
# PostgreSQL and MariaDB servers the test suite talks to. Idempotent: every step checks
# first and does nothing when it is already done, so run it as often as you like.
#
#   bash scripts/setup.sh               everything `make test` / .ci/run needs
#   bash scripts/setup.sh --no-servers  only .venv (enough for `fedlab demo` on SQLite files)
#
# Environment:
#   PYTHON          the interpreter for a new .venv (default: python3.11)
#   SETUP_WAIT_S    how long to wait for a server to answer (default: 60)
#
# pip runs with the machine's own configuration (pip.conf, PIP_* variables): nothing
# here names an index. Debian packages are installed only when something is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3.11}"
VENV="$ROOT/.venv"
WAIT_S="${SETUP_WAIT_S:-60}"
PG_HOST=127.0.0.1
MY_HOST=127.0.0.1
PG_PREPARED=20 # max_prepared_transactions: two-phase commit across sources needs > 0

with_servers=1

log() { printf '[setup] %s\n' "$*"; }
die() {
    printf '[setup] error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case "$arg" in
    --no-servers) with_servers=0 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown option $arg (try --help)" ;;
    esac
done

# ---------------------------------------------------------------- Debian packages
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        die "missing Debian packages: $* (install them, or run this script as root)"
    fi
    log "installing Debian packages: $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    missing+=(python3.11 python3.11-venv)
elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3.11-venv)
fi
fresh_pg=0
fresh_my=0
if ((with_servers)); then
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! compgen -G '/etc/postgresql/*/main' >/dev/null; then
        missing+=(postgresql)
        fresh_pg=1
    fi
    for tool in psql pg_isready; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            missing+=(postgresql-client)
            break
        fi
    done
    command -v openssl >/dev/null 2>&1 || missing+=(openssl) # PostgreSQL's TLS certificate
    if [[ ! -x /usr/sbin/mariadbd ]]; then
        missing+=(mariadb-server)
        fresh_my=1
    fi
    for tool in mysql mysqladmin; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            missing+=(mariadb-client)
            break
        fi
    done
    # fedlab.fdw (tests/test_fdw.py): postgres_fdw ships with the server, mysql_fdw is a
    # separate Debian package built for the installed server version
    if command -v pg_ctlcluster >/dev/null 2>&1 && compgen -G '/etc/postgresql/*/main' >/dev/null; then
        pg_major=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    else
        pg_major=15 # the postgresql package installed above: Debian 12's server is 15
    fi
    if [[ ! -f /usr/share/postgresql/$pg_major/extension/mysql_fdw.control ]]; then
        missing+=("postgresql-$pg_major-mysql-fdw")
    fi
    # the real-browser test (tests/test_browser.py) drives Debian's Chromium with
    # playwright; `playwright install` (a browser download) is never used
    if [[ ! -x /usr/bin/chromium ]]; then
        missing+=(chromium)
    fi
    # the Spark engine (fedlab.spark, tests/test_spark.py) runs pyspark on Java 17
    command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
fi
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
else
    log "Debian packages: all present"
fi
if ((with_servers)); then
    bash "$ROOT/scripts/setup-spark.sh" # the JDBC jars Spark reads the databases with
fi

# ---------------------------------------------------------------- virtualenv
venv_ok() {
    # a .venv copied or moved from elsewhere has scripts whose #! points at the old place
    [[ -x "$VENV/bin/python" ]] &&
        "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null &&
        { [[ ! -e "$VENV/bin/pip" ]] || [[ "$(head -n 1 "$VENV/bin/pip")" == "#!$VENV/bin/python"* ]]; }
}

if [[ -e "$VENV" ]] && ! venv_ok; then
    log ".venv is not a Python 3.11 virtualenv made for $ROOT: recreating it"
    rm -rf "$VENV"
fi
if [[ ! -e "$VENV" ]]; then
    log "creating .venv with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when pyproject.toml or constraints.txt changed since the last install (or
# fedlab is not the editable install of this checkout): a no-op run takes a second.
stamp="$VENV/.fedlab-setup-stamp"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) $ROOT"
installed_here() {
    "$VENV/bin/python" - "$ROOT" <<'PY' 2>/dev/null
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("fedlab")
root = pathlib.Path(sys.argv[1]).resolve()
sys.exit(spec is None or spec.origin is None or root not in pathlib.Path(spec.origin).resolve().parents)
PY
}
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$VENV/bin/fedlab" ]] && installed_here; then
    log "Python packages: up to date"
else
    log "installing fedlab[dev] into .venv (pinned by constraints.txt)"
    # the machine's extra index lists names it holds no files for, and pip warns once per
    # such package: drop those lines, keep everything else (and pip's exit status)
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c constraints.txt -e '.[dev]' 2>&1 |
        { grep -v "^WARNING: Location 'file://.*' is ignored: it is neither a file nor a directory" || true; }
    "$VENV/bin/python" -m pip check >/dev/null || die "pip check found broken requirements"
    printf '%s\n' "$want" >"$stamp"
fi

if ((!with_servers)); then
    log "done (--no-servers: PostgreSQL and MariaDB left as they are)"
    exit 0
fi

# ---------------------------------------------------------------- servers
wait_for() { # wait_for NAME COMMAND...: until COMMAND succeeds, at most WAIT_S seconds
    local name=$1 waited=0
    shift
    until "$@" >/dev/null 2>&1; do
        if ((waited >= WAIT_S)); then
            die "$name does not answer after ${WAIT_S}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

pg_version() { find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1; }
pg_up() { pg_isready -q -h "$PG_HOST" -p 5432; }
pg_sql() { psql -X -q -A -t -h "$PG_HOST" -U postgres -d postgres -c "$1"; }
pg_ctl() { pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main "$1"; }

my_up() { mysqladmin -h"$MY_HOST" -uroot --connect-timeout=2 ping; }
my_sql() { mysql -h"$MY_HOST" -uroot -N -B -e "$1"; }

# PostgreSQL
if pg_up; then
    log "PostgreSQL: running"
else
    log "PostgreSQL: starting cluster $(pg_version)/main"
    pg_ctl start || true # "already running" (still starting up) is fine: we wait below
    wait_for PostgreSQL pg_up
fi
if ((fresh_pg)); then
    # a freshly installed Debian cluster asks for passwords on TCP; the suite connects as
    # postgres@127.0.0.1 without one (as on the project's machines)
    hba="/etc/postgresql/$(pg_version)/main/pg_hba.conf"
    if ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        log "PostgreSQL: trust auth for 127.0.0.1 (new install)"
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        pg_ctl reload
    fi
fi
pg_sql 'SELECT 1' >/dev/null || die "PostgreSQL answers but postgres@$PG_HOST cannot log in without a password"
have=$(pg_sql 'SHOW max_prepared_transactions')
if ((have < PG_PREPARED)); then
    log "PostgreSQL: max_prepared_transactions $have -> $PG_PREPARED (restart)"
    pg_sql "ALTER SYSTEM SET max_prepared_transactions = $PG_PREPARED" >/dev/null
    pg_ctl restart
    wait_for PostgreSQL pg_up
else
    log "PostgreSQL: max_prepared_transactions = $have"
fi
if [[ $(pg_sql 'SHOW ssl') != on ]]; then
    # TLS for the tests that prove fedlab's sessions are encrypted (sslmode=require): a
    # self-signed certificate; plain connections keep working
    pg_dir="/etc/postgresql/$(pg_version)/main"
    if [[ ! -s $pg_dir/fedlab-server.crt ]]; then
        openssl req -new -x509 -days 3650 -nodes -subj /CN=127.0.0.1 \
            -keyout "$pg_dir/fedlab-server.key" -out "$pg_dir/fedlab-server.crt" >/dev/null 2>&1 ||
            die "could not make a TLS certificate for PostgreSQL"
        chown postgres: "$pg_dir/fedlab-server.key" "$pg_dir/fedlab-server.crt"
        chmod 600 "$pg_dir/fedlab-server.key"
    fi
    pg_sql "ALTER SYSTEM SET ssl_cert_file = '$pg_dir/fedlab-server.crt'" >/dev/null
    pg_sql "ALTER SYSTEM SET ssl_key_file = '$pg_dir/fedlab-server.key'" >/dev/null
    pg_sql "ALTER SYSTEM SET ssl = on" >/dev/null
    pg_sql "SELECT pg_reload_conf()" >/dev/null
    sleep 1
    [[ $(pg_sql 'SHOW ssl') == on ]] || die "PostgreSQL: could not switch ssl on"
    log "PostgreSQL: ssl on (self-signed certificate in $pg_dir)"
else
    log "PostgreSQL: ssl = on"
fi

# MariaDB
if my_up >/dev/null 2>&1; then
    log "MariaDB: running"
else
    log "MariaDB: starting mariadbd"
    install -d -o mysql -g mysql /run/mysqld # on tmpfs: gone after a reboot
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for MariaDB my_up
fi
if ((fresh_my)); then
    # Debian's root@localhost logs in by unix socket only; the suite connects over TCP as
    # root with an empty password (as on the project's machines)
    log "MariaDB: root over TCP without a password (new install)"
    mysql -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
        CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
        GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
fi
my_sql 'SELECT 1' >/dev/null || die "MariaDB answers but root@$MY_HOST cannot log in without a password"
# TLS for the tests that prove fedlab's MariaDB sessions are encrypted (restarts MariaDB
# once, when it has no TLS yet: before the SET GLOBAL settings below)
MY_HOST="$MY_HOST" SETUP_WAIT_S="$WAIT_S" bash "$ROOT/scripts/setup-mariadb-tls.sh"
# fedlab.load bulk-loads with LOAD DATA LOCAL INFILE, which the server must allow. SET
# GLOBAL does not survive a server restart: this script sets it again on every run.
if [[ "$(my_sql 'SELECT @@GLOBAL.local_infile')" != 1 ]]; then
    log "MariaDB: local_infile OFF -> ON"
    my_sql 'SET GLOBAL local_infile = 1'
else
    log "MariaDB: local_infile = ON"
fi

log "done: .venv ready, PostgreSQL and MariaDB answering on 127.0.0.1"
