#!/usr/bin/env bash
# Switch TLS on in the local MariaDB server (a self-signed certificate), for the tests that
# prove fedlab's MariaDB sessions are encrypted. Called by scripts/setup.sh; idempotent:
# does nothing when the server already has TLS (have_ssl = YES).
#
# MariaDB reads ssl_cert / ssl_key at start only: the lines go into /etc/mysql/my.cnf's
# [mysqld] section (once) and the server is restarted (mysqladmin shutdown, then
# start-stop-daemon as in setup.sh). Settings made with SET GLOBAL are lost by the restart:
# setup.sh runs this before it sets local_infile.
set -euo pipefail

MY_HOST=${MY_HOST:-127.0.0.1}
WAIT_S=${SETUP_WAIT_S:-60}
CNF=/etc/mysql/my.cnf
DIR=/etc/mysql/fedlab-tls

log() { printf '[setup] %s\n' "$*"; }
die() {
    printf '[setup] error: %s\n' "$*" >&2
    exit 1
}
my_sql() { mysql -h"$MY_HOST" -uroot -N -B -e "$1"; }
my_up() { mysqladmin -h"$MY_HOST" -uroot --connect-timeout=2 ping >/dev/null 2>&1; }

if [[ "$(my_sql "SELECT @@GLOBAL.have_ssl")" == YES ]]; then
    log "MariaDB: TLS on"
    exit 0
fi
[[ -w "$CNF" ]] || die "MariaDB has no TLS and $CNF is not writable: run as root"
command -v openssl >/dev/null 2>&1 || die "openssl is missing (apt-get install openssl)"

if [[ ! -s "$DIR/server.crt" ]]; then
    install -d -m 755 "$DIR"
    openssl req -new -x509 -days 3650 -nodes -subj /CN=127.0.0.1 \
        -keyout "$DIR/server.key" -out "$DIR/server.crt" >/dev/null 2>&1 ||
        die "could not make a TLS certificate for MariaDB"
    chown mysql:mysql "$DIR/server.key" "$DIR/server.crt"
    chmod 600 "$DIR/server.key"
fi
if ! grep -q '^ssl_cert *= *'"$DIR" "$CNF"; then
    # after the [mysqld] header, so that they belong to that section
    sed -i "/^\[mysqld\]/a ssl_cert = $DIR/server.crt\nssl_key = $DIR/server.key" "$CNF"
fi

log "MariaDB: restarting with TLS (self-signed certificate in $DIR)"
mysqladmin -h"$MY_HOST" -uroot shutdown || die "could not stop MariaDB"
# wait for the process itself to end (it stops answering before it exits)
for ((i = 0; i < WAIT_S * 5; i++)); do
    pgrep -x mariadbd >/dev/null || break
    sleep 0.2
done
pgrep -x mariadbd >/dev/null && die "MariaDB did not stop within ${WAIT_S}s"
install -d -o mysql -g mysql /run/mysqld
start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
for ((i = 0; i < WAIT_S * 5; i++)); do
    my_up && break
    sleep 0.2
done
my_up || die "MariaDB did not come back within ${WAIT_S}s (see /var/log/mysql/error.log)"
[[ "$(my_sql "SELECT @@GLOBAL.have_ssl")" == YES ]] ||
    die "MariaDB restarted without TLS (see /var/log/mysql/error.log)"
log "MariaDB: TLS on (self-signed certificate in $DIR)"
