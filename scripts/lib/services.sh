# Sourced by scripts/test and scripts/test-services-check. Gives the test suites a
# PostgreSQL, a Redis and a Redis Cluster without touching the machine's own: unless
# TEST_DATABASE_URL / TEST_REDIS_URL / TEST_REDIS_CLUSTER_URL name existing servers,
# services_start starts a throwaway PostgreSQL cluster, a throwaway redis-server and a
# three-master Redis Cluster (three `redis-server --cluster-enabled yes` joined with
# `redis-cli --cluster create`) under target/test-services/ on free loopback ports,
# exports the URLs, and services_stop stops them and removes their data.
# Only missing Debian packages are installed; no system service is started, stopped or
# reconfigured, and no password is changed.
#
#   services_start   start what is missing, export TEST_DATABASE_URL, TEST_REDIS_URL
#                    and TEST_REDIS_CLUSTER_URL (redis-cluster://127.0.0.1:P1?node=…)
#   services_stop    stop what services_start started (idempotent; callers trap it)
#
# TEST_SERVICES_DIR overrides the state directory (default target/test-services).

SERVICES_DIR="${TEST_SERVICES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/test-services}"
SERVICES_LOCK_FD=""
SERVICES_PG_BIN=""   # set while a throwaway cluster runs
SERVICES_PG_DIR=""
SERVICES_REDIS_PID=""
SERVICES_REDIS_PORT=""
SERVICES_CLUSTER_PIDS=""  # set while a throwaway Redis Cluster runs

services_log() { printf '==> %s\n' "$*" >&2; }

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

# A port nothing listens on, below the kernel's ephemeral range so the tests' own
# port-0 sockets do not race for it. Startup still retries if it is taken meanwhile.
free_port() {
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 12000))
    port_open "$port" || { echo "$port"; return 0; }
  done
  echo "no free port found in 20000-31999" >&2; return 1
}

# Waits until "$@" succeeds, for at most $1 seconds; gives up at once if it returns 2
# ("will never succeed", e.g. the server exited).
wait_for() {
  local deadline=$((SECONDS + $1)) rc; shift
  while :; do
    rc=0; "$@" || rc=$?
    [ "$rc" != 0 ] || return 0
    [ "$rc" != 2 ] && [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

process_gone() { ! kill -0 "$1" 2>/dev/null; }

# Whether pid $1 is a $2 process working in directory $3: a pid file from an aborted run
# may name a pid since reused by another program, which must not be signalled.
process_is() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] &&
    [ "$(readlink "/proc/$1/cwd" 2>/dev/null)" = "$(cd "$3" 2>/dev/null && pwd -P)" ]
}

# --- PostgreSQL ------------------------------------------------------------------------

# The newest installed server's bin directory (Debian keeps it off PATH).
pg_bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV) "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")"; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/pg_isready" ]; then echo "$dir"; return 0; fi
  done
  return 1
}

# initdb and postgres refuse to run as root: as root, run them as the `postgres` user
# the Debian package creates, from / (it may not be allowed into the caller's cwd).
pg_as_owner() {
  if [ "$(id -u)" != 0 ]; then "$@"; return; fi
  if command -v runuser >/dev/null; then (cd / && runuser -u postgres -- "$@"); else
    (cd / && su -s /bin/sh postgres -c "$(printf '%q ' "$@")"); fi
}

# Stops a cluster left running by an aborted run (the lock says none is in use) and
# removes its files.
pg_clear_stale() {
  local dir=$1 pid
  if [ -f "$dir/data/postmaster.pid" ]; then
    pid=$(head -n1 "$dir/data/postmaster.pid")
    # The postmaster works in its data directory.
    if [ -n "$pid" ] && process_is "$pid" postgres "$dir/data"; then
      services_log "stopping a PostgreSQL left running by an earlier run (pid $pid)"
      kill -QUIT "$pid" 2>/dev/null || true  # immediate shutdown: its data is thrown away
      wait_for 20 process_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$dir/data" "$dir/run"
}

pg_start() {
  local bin dir port attempt sockets
  if ! bin=$(pg_bindir); then
    echo "PostgreSQL not found: installing it (apt-get install postgresql)" >&2
    apt_install postgresql
    bin=$(pg_bindir) || { echo "no initdb found after installing postgresql" >&2; return 1; }
  fi
  dir="$SERVICES_DIR/pg"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
    if ! pg_as_owner test -w "$dir"; then
      # The postgres user cannot reach the checkout (e.g. under a private home directory).
      dir="${TMPDIR:-/tmp}/rendezvous-test-pg-$(printf %s "$SERVICES_DIR" | cksum | cut -d' ' -f1)"
      mkdir -p "$dir" && chown postgres: "$dir" && chmod 700 "$dir"
    fi
  fi
  pg_clear_stale "$dir"
  pg_as_owner mkdir -m 700 "$dir/run"
  pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale --no-sync \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
  # A Unix socket path is limited to ~107 bytes; past that, TCP only.
  sockets="$dir/run"
  [ "${#sockets}" -le 90 ] || sockets=""
  pg_as_owner tee "$dir/data/pg_hba.conf" >/dev/null <<EOF
# Throwaway test cluster (scripts/lib/services.sh): its own socket and loopback only.
local all all trust
host  all all 127.0.0.1/32 trust
EOF
  # Durability off: the cluster lives for one test run.
  pg_as_owner tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sockets'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  SERVICES_PG_BIN=$bin SERVICES_PG_DIR=$dir
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    services_log "starting a throwaway PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port in ${dir#"$PWD"/}"
    if pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w -t 30 start \
      >/dev/null {SERVICES_LOCK_FD}>&-; then
      if wait_for 10 "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
        export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
        return 0
      fi
      echo "PostgreSQL started but 127.0.0.1:$port does not answer" >&2
      break
    fi
    grep -q 'could not bind\|Address already in use' "$dir/server.log" 2>/dev/null || break
  done
  echo "PostgreSQL did not start; the end of ${dir}/server.log:" >&2
  tail -n 20 "$dir/server.log" >&2 || true
  return 1
}

pg_stop() {
  [ -n "$SERVICES_PG_DIR" ] || return 0
  local bin=$SERVICES_PG_BIN dir=$SERVICES_PG_DIR
  SERVICES_PG_DIR=""
  if [ -f "$dir/data/postmaster.pid" ]; then
    pg_as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
      pg_as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 10 stop >/dev/null 2>&1 || true
  fi
  pg_clear_stale "$dir"
}

# --- Redis -----------------------------------------------------------------------------

redis_clear_stale() {
  local dir=$1 pid
  if [ -f "$dir/redis.pid" ]; then
    pid=$(cat "$dir/redis.pid")
    # --dir makes redis-server work in the state directory.
    if [ -n "$pid" ] && process_is "$pid" redis-server "$dir"; then
      services_log "stopping a redis-server left running by an earlier run (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      wait_for 10 process_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/redis.pid" "$dir"/*.rdb
}

redis_start() {
  local dir="$SERVICES_DIR/redis" port attempt
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "Redis not found: installing it (apt-get install redis-server)" >&2
    apt_install redis-server
  fi
  mkdir -p "$dir"
  redis_clear_stale "$dir"
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    services_log "starting a throwaway redis-server on 127.0.0.1:$port"
    : >"$dir/redis.log"
    # A child of this shell, not a daemon, so services_stop can wait for it.
    redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes --save '' --appendonly no \
      --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --daemonize no \
      </dev/null >/dev/null 2>&1 {SERVICES_LOCK_FD}>&- &
    SERVICES_REDIS_PID=$! SERVICES_REDIS_PORT=$port
    if wait_for 20 redis_ready "$port"; then
      export TEST_REDIS_URL="redis://127.0.0.1:$port"
      return 0
    fi
    redis_stop
    grep -q 'Address already in use' "$dir/redis.log" || break
  done
  echo "redis-server did not start; the end of $dir/redis.log:" >&2
  tail -n 20 "$dir/redis.log" >&2 || true
  return 1
}

# 0 once the server answers, 2 once it has exited (no point waiting), else 1.
redis_ready() {
  [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ] && return 0
  kill -0 "$SERVICES_REDIS_PID" 2>/dev/null || return 2
  return 1
}

redis_stop() {
  [ -n "$SERVICES_REDIS_PID" ] || return 0
  local pid=$SERVICES_REDIS_PID
  SERVICES_REDIS_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  wait_for 10 process_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$SERVICES_DIR/redis/redis.pid" "$SERVICES_DIR/redis"/*.rdb
}

# --- Redis Cluster ---------------------------------------------------------------------

# A port P free together with its cluster bus port P+10000, both below the ephemeral range.
cluster_free_port() {
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 2700))
    port_open "$port" || port_open $((port + 10000)) || { echo "$port"; return 0; }
  done
  echo "no free port pair found in 20000-22699" >&2; return 1
}

cluster_clear_stale() {
  local dir=$1 node pid
  for node in "$dir"/n*; do
    [ -d "$node" ] || continue
    if [ -f "$node/redis.pid" ]; then
      pid=$(cat "$node/redis.pid")
      if [ -n "$pid" ] && process_is "$pid" redis-server "$node"; then
        services_log "stopping a Redis Cluster node left running by an earlier run (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        wait_for 10 process_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
  done
  rm -rf "$dir"
}

# 0 once node $1 answers PING, 2 once process $2 has exited, else 1.
cluster_node_ready() {
  [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ] && return 0
  kill -0 "$2" 2>/dev/null || return 2
  return 1
}

# The ports named in a redis-cluster:// URL, one a line.
cluster_ports() { printf '%s\n' "${1#*@}" | grep -oE ':[0-9]+' | tr -d :; }

# 0 once every node reports cluster_state:ok.
cluster_ok() {
  local port
  for port in "$@"; do
    redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok' || return 1
  done
}

redis_cluster_start() {
  local dir="$SERVICES_DIR/redis-cluster" ports=() i port pid attempt
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "Redis not found: installing it (apt-get install redis-server redis-tools)" >&2
    apt_install redis-server redis-tools
  fi
  cluster_clear_stale "$dir"
  for i in 1 2 3; do
    mkdir -p "$dir/n$i"
    for attempt in 1 2 3 4 5; do
      port=$(cluster_free_port)
      : >"$dir/n$i/redis.log"
      # Children of this shell, not daemons; memory only, loopback only.
      redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes --save '' --appendonly no \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --dir "$dir/n$i" --pidfile "$dir/n$i/redis.pid" --logfile "$dir/n$i/redis.log" --daemonize no \
        </dev/null >/dev/null 2>&1 {SERVICES_LOCK_FD}>&- &
      pid=$!
      SERVICES_CLUSTER_PIDS="$SERVICES_CLUSTER_PIDS $pid"
      if wait_for 20 cluster_node_ready "$port" "$pid"; then break; fi
      grep -q 'Address already in use' "$dir/n$i/redis.log" || { port=""; break; }
      port=""
    done
    if [ -z "$port" ]; then
      echo "Redis Cluster node $i did not start; the end of $dir/n$i/redis.log:" >&2
      tail -n 20 "$dir/n$i/redis.log" >&2 || true
      redis_cluster_stop
      return 1
    fi
    ports+=("$port")
  done
  services_log "starting a throwaway three-master Redis Cluster on 127.0.0.1:${ports[*]}"
  if ! redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" "127.0.0.1:${ports[2]}" \
    --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1; then
    echo "redis-cli --cluster create failed:" >&2; tail -n 20 "$dir/create.log" >&2
    redis_cluster_stop
    return 1
  fi
  if ! wait_for 30 cluster_ok "${ports[@]}"; then
    echo "the Redis Cluster on ${ports[*]} did not reach cluster_state:ok" >&2
    redis_cluster_stop
    return 1
  fi
  export TEST_REDIS_CLUSTER_URL="redis-cluster://127.0.0.1:${ports[0]}?node=127.0.0.1:${ports[1]}&node=127.0.0.1:${ports[2]}"
}

redis_cluster_stop() {
  [ -n "$SERVICES_CLUSTER_PIDS" ] || return 0
  local pids=$SERVICES_CLUSTER_PIDS pid
  SERVICES_CLUSTER_PIDS=""
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $pids; do
    wait_for 10 process_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$SERVICES_DIR/redis-cluster"
}

# --- all -------------------------------------------------------------------------------

services_start() {
  if [ -z "${TEST_DATABASE_URL:-}" ] || [ -z "${TEST_REDIS_URL:-}" ] || [ -z "${TEST_REDIS_CLUSTER_URL:-}" ]; then
    mkdir -p "$SERVICES_DIR"
    # One run per checkout at a time; holding the lock also proves that any server
    # found in the state directory was left behind by an aborted run.
    exec {SERVICES_LOCK_FD}>"$SERVICES_DIR/lock"
    # A few seconds' grace: what a killed run started may hold it a moment longer.
    if ! flock -w 10 "$SERVICES_LOCK_FD"; then
      echo "another scripts/test is using $SERVICES_DIR; wait for it to finish" >&2
      return 1
    fi
  fi
  if [ -z "${TEST_DATABASE_URL:-}" ]; then pg_start; fi
  if [ -z "${TEST_REDIS_URL:-}" ]; then redis_start; fi
  if [ -z "${TEST_REDIS_CLUSTER_URL:-}" ]; then redis_cluster_start; fi
}

services_stop() {
  redis_cluster_stop
  redis_stop
  pg_stop
  if [ -n "$SERVICES_LOCK_FD" ]; then
    exec {SERVICES_LOCK_FD}>&-
    SERVICES_LOCK_FD=""
  fi
}
