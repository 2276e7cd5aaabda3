# Sourced by scripts/test. Makes sure PostgreSQL and Redis answer on loopback,
# installing (Debian packages) and starting them when they are missing, and exports
# TEST_DATABASE_URL and TEST_REDIS_URL for the test suites.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  echo "nothing is listening on 127.0.0.1:$1 after 30 s" >&2; return 1
}

ensure_postgres() {
  if [ -n "${TEST_DATABASE_URL:-}" ]; then return 0; fi
  if ! port_open 5432; then
    if ! command -v pg_ctlcluster >/dev/null; then
      echo "PostgreSQL not found: installing it (apt-get install postgresql)" >&2
      apt_install postgresql
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    echo "starting PostgreSQL $version" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main start
    wait_port 5432
  fi
  # Trust auth (CI machines) needs no password; a stock Debian install wants one.
  if command -v psql >/dev/null && ! psql "postgres://postgres@127.0.0.1:5432/postgres" -tAc 'select 1' >/dev/null 2>&1; then
    as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    export TEST_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"
  else
    export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  fi
}

ensure_redis() {
  if [ -n "${TEST_REDIS_URL:-}" ]; then return 0; fi
  if ! port_open 6379; then
    if ! command -v redis-server >/dev/null; then
      echo "Redis not found: installing it (apt-get install redis-server)" >&2
      apt_install redis-server
    fi
    echo "starting Redis" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_port 6379
  fi
  export TEST_REDIS_URL="redis://127.0.0.1:6379"
}
