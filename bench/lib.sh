# Shared by the bench scripts (source it after setting BENCH_TAG): logging and
# process handling. Every process a script starts gets its own session
# (setsid) and is stopped through its process group, on success and on error
# alike, so children (wrangler's workerd, the Lambda runner's instances) go too.
# shellcheck shell=bash

log() { printf '[%s] %s\n' "${BENCH_TAG:-bench}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

PIDS=()
stop_proc() { # PID : SIGTERM the group, wait up to 5 s, then SIGKILL what is left
  local pid=$1 i
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop on SIGTERM, sending SIGKILL"
  fi
  # The group in any case: children may outlive their leader.
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_proc "$pid"; done
  PIDS=()
  if declare -F stop_postgres >/dev/null; then stop_postgres; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_bg() { # VAR OUT_FILE ERR_FILE CMD... : CMD in a new session; VAR gets its pid
  local var=$1 out=$2 errf=$3
  shift 3
  setsid "$@" >"$out" 2>"$errf" </dev/null &
  local pid=$!
  PIDS+=("$pid")
  # Scripts that sample other processes' load list their own sessions here.
  [[ -z ${BENCH_SESSIONS:-} ]] || echo "$pid" >>"$BENCH_SESSIONS"
  printf -v "$var" '%s' "$pid"
}

forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# run_fg CMD... : runs CMD as a tracked child and waits for it; `wait` returns at once when
# a trapped signal arrives, so Ctrl-C / SIGTERM stop the run without finishing the phase.
run_fg() {
  "$@" &
  local pid=$! rc=0
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  return "$rc"
}

# wait_url PID OUT_FILE PREFIX ERR_FILE [TRIES] : prints what follows PREFIX in OUT_FILE
# (a listening URL), polling every 20 ms, TRIES times (default 500: 10 s).
wait_url() {
  local pid=$1 out=$2 prefix=$3 errf=$4 tries=${5:-500} i line
  for ((i = 0; i < tries; i++)); do
    line=$(grep -m1 "^$prefix" "$out" 2>/dev/null || true)
    if [[ -n $line ]]; then
      printf '%s\n' "${line#"$prefix"}"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$errf" "$out" >&2 || true; die "process $pid exited before listening"; }
    sleep 0.02
  done
  tail -n 20 "$errf" "$out" >&2 || true
  die "process $pid did not print '$prefix' in time"
}

# How busy the machine is without us: CPU use of everything over 1 s, in percent.
cpu_busy_pct() {
  local u1 n1 s1 i1 w1 q1 sq1 st1 u2 n2 s2 i2 w2 q2 sq2 st2 busy total
  read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ </proc/stat
  sleep 1
  read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ </proc/stat
  busy=$(((u2 + n2 + s2 + q2 + sq2 + st2) - (u1 + n1 + s1 + q1 + sq1 + st1)))
  total=$((busy + (i2 + w2) - (i1 + w1)))
  ((total > 0)) || total=1
  echo $((100 * busy / total))
}

# A throwaway PostgreSQL on 127.0.0.1 (Debian's package, as the tests run it):
# sets PG_URL; `cleanup` stops it and removes its directory.
start_postgres() {
  local bin port pass
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n $bin ]] || die "PostgreSQL is not installed (apt-get install postgresql)"
  port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  pass=$(head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9)
  PG_DIR=$(mktemp -d); chmod 711 "$PG_DIR"; mkdir -p "$PG_DIR/sock"
  PG_AS=()
  if [[ $(id -u) == 0 ]]; then chown -R postgres "$PG_DIR"; PG_AS=(runuser -u postgres --); fi
  printf '%s\n' "$pass" >"$PG_DIR/pw"; [[ ${#PG_AS[@]} -gt 0 ]] && chown postgres "$PG_DIR/pw"
  PG_BIN=$bin
  (cd "$PG_DIR" && "${PG_AS[@]}" "$bin/initdb" -D "$PG_DIR/data" -U conduit --pwfile="$PG_DIR/pw" -E UTF8 \
    --no-locale --auth-local=trust --auth-host=scram-sha-256 >/dev/null)
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" "$port" "$PG_DIR/sock" \
    >>"$PG_DIR/data/postgresql.conf"
  (cd "$PG_DIR" && "${PG_AS[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 60 start >/dev/null)
  (cd "$PG_DIR" && "${PG_AS[@]}" "$bin/createdb" -h "$PG_DIR/sock" -p "$port" -U conduit conduit)
  PG_URL="postgres://conduit:$pass@127.0.0.1:$port/conduit"
  log "PostgreSQL at 127.0.0.1:$port ($PG_DIR)"
}

stop_postgres() {
  [[ -n ${PG_DIR:-} ]] || return 0
  (cd "$PG_DIR" && "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1) || true
  rm -rf "$PG_DIR"; PG_DIR=
}
