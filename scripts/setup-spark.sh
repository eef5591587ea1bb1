#!/usr/bin/env bash
# The JDBC drivers fedlab's Spark engine (fedlab/spark.py, issue #8) gives to Spark:
# PostgreSQL, MariaDB and SQLite jars from Debian, under /usr/share/java. Idempotent:
# installs the Debian packages only when a jar is missing, and nothing else (Java itself
# and pyspark are not installed here: see docs/spark.md).
#
#   bash scripts/setup-spark.sh          install what is missing (root: uses apt-get)
#   bash scripts/setup-spark.sh --check  only say what is missing (exit 1 if anything)
set -euo pipefail

JAVA_DIR=/usr/share/java

log() { printf '[setup-spark] %s\n' "$*"; }
die() {
    printf '[setup-spark] error: %s\n' "$*" >&2
    exit 1
}

check_only=0
for arg in "$@"; do
    case "$arg" in
    --check) check_only=1 ;;
    -h | --help)
        sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown option $arg (try --help)" ;;
    esac
done

# package -> the jar it provides (unversioned symlink Debian keeps up to date)
declare -A JARS=(
    [libpostgresql-jdbc-java]=postgresql.jar
    [libmariadb-java]=mariadb-java-client.jar
    [libxerial-sqlite-jdbc-java]=sqlite-jdbc.jar
)

missing=()
for pkg in libpostgresql-jdbc-java libmariadb-java libxerial-sqlite-jdbc-java; do
    if [[ ! -f "$JAVA_DIR/${JARS[$pkg]}" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    log "JDBC jars present in $JAVA_DIR: ${JARS[*]}"
    exit 0
fi
if [[ $check_only -eq 1 ]]; then
    log "missing Debian packages: ${missing[*]}"
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    die "missing Debian packages: ${missing[*]} (install them, or run this script as root)"
fi
log "installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
for pkg in "${missing[@]}"; do
    [[ -f "$JAVA_DIR/${JARS[$pkg]}" ]] || die "$pkg installed but $JAVA_DIR/${JARS[$pkg]} is missing"
done
log "JDBC jars present in $JAVA_DIR: ${JARS[*]}"
