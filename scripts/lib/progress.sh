# Sourced by scripts/test and scripts/autobahn. On a terminal, long steps keep one
# status line (what runs, how far, elapsed time) rewritten in place under their output;
# in CI (CI set to anything but false/0) or when stdout is not a terminal, output passes
# through untouched. Either way a step's complete output goes to its log file.
#
#   run_step KIND LABEL LOG CMD...   run CMD (KIND: cargo, autobahn or plain); its status
#   step_kill                        end the running step's whole process tree (traps)

PROGRESS_T0=$(printf '%(%s)T' -1)
STEP_PIDFILE=""

progress_wanted() {
  [ -t 1 ] || return 1
  case "${CI:-}" in "" | false | 0) return 0 ;; *) return 1 ;; esac
}

# The terminal's width; a zero-sized pseudo-terminal (e.g. under script(1)) counts as 80.
progress_measure() {
  PROGRESS_COLS=$(tput cols 2>/dev/null) || true
  [ "${PROGRESS_COLS:-0}" -ge 20 ] 2>/dev/null || PROGRESS_COLS=80
}

# Rewrites the status line, cut to the terminal width (a wrapped line cannot be redrawn).
progress_draw() {
  local now text
  printf -v now '%(%s)T' -1
  now=$((now - PROGRESS_T0))
  printf -v text '[%d:%02d] %s' $((now / 60)) $((now % 60)) "$1"
  printf '\r\033[K%s' "${text:0:$((PROGRESS_COLS - 1))}"
}

progress_clear() { printf '\r\033[K'; }

# "done/total cases" from the file scripts/autobahn's runner appends to as cases finish:
# the total on its first line, then one line per finished case.
autobahn_progress() {
  local file=$1 total lines
  [ -s "$file" ] || return 0
  read -r total <"$file" || return 0
  lines=$(wc -l <"$file")
  printf '%d/%d cases' $((lines - 1)) "$total"
}

# --- what a cargo test run is doing, read from its output ------------------------------

cargo_progress_reset() {
  CP_DOING="building" CP_SUITES=0 CP_SUITE=0 CP_NAME="" CP_TESTS=0 CP_DONE=0 CP_PASSED=0 CP_FAILED=0
}

cargo_progress_line() {
  local re_build='^ +(Compiling|Checking|Building) (.*)$' re_run='^ +Running (.*) \(([^)]*)\)$'
  if [[ $1 =~ ^test\ .*\ \.\.\.\ (ok|FAILED|ignored) ]]; then
    CP_DONE=$((CP_DONE + 1))
    case "${BASH_REMATCH[1]}" in ok) CP_PASSED=$((CP_PASSED + 1)) ;; FAILED) CP_FAILED=$((CP_FAILED + 1)) ;; esac
  elif [[ $1 =~ ^running\ ([0-9]+)\ tests?$ ]]; then
    CP_TESTS=${BASH_REMATCH[1]} CP_DONE=0
  elif [[ $1 =~ $re_run ]]; then
    local bin=${BASH_REMATCH[2]##*/}
    CP_DOING="testing" CP_SUITE=$((CP_SUITE + 1)) CP_NAME="${bin%-*} ${BASH_REMATCH[1]#unittests }" CP_TESTS=0 CP_DONE=0
  elif [[ $1 =~ ^\ +Executable\  ]]; then
    CP_SUITES=$((CP_SUITES + 1))
  elif [[ $1 =~ $re_build ]]; then
    CP_DOING="building ${BASH_REMATCH[2]%% (*}" # "foo v0.1.0", not its path
  fi
}

# Sets CP_TEXT (no command substitution: this runs once per output line).
cargo_progress_text() {
  if [ "$CP_SUITE" = 0 ]; then CP_TEXT=$CP_DOING; return; fi
  local of=""
  [ "$CP_SUITES" -lt "$CP_SUITE" ] || of="/$CP_SUITES"
  # Counts first: a narrow terminal cuts the end.
  CP_TEXT="$CP_PASSED passed, $CP_FAILED failed · suite $CP_SUITE$of $CP_NAME, test $CP_DONE/$CP_TESTS"
}

# --- the filter --------------------------------------------------------------------------

# Copies stdin to LOG and stdout; on a terminal also keeps the status line, redrawn after
# each line and at least once a second while a step is silent.
progress_filter() {
  local kind=$1 label=$2 log=$3
  if ! progress_wanted; then
    tee -a "$log"
    return
  fi
  progress_measure
  local line="" part="" rc logfd info phase=""
  exec {logfd}>>"$log"
  cargo_progress_reset
  while :; do
    rc=0
    IFS= read -r -t 1 line || rc=$?
    if [ "$rc" -gt 128 ]; then # a second without a full line; keep what came so far
      part+=$line
    else
      line=$part$line part=""
      [ "$rc" = 0 ] || [ -n "$line" ] || break
      printf '%s\n' "$line" >&"$logfd"
      progress_clear
      printf '%s\n' "$line"
      [ "$kind" != cargo ] || cargo_progress_line "$line"
      [[ $line != "==> "* ]] || phase=${line#==> } # a script's "what now" line
      [ "$rc" = 0 ] || break
    fi
    case "$kind" in
      cargo) cargo_progress_text && progress_draw "$label · $CP_TEXT" ;;
      autobahn)
        info=$(autobahn_progress "$AUTOBAHN_PROGRESS_FILE")
        info=${info:-$phase}
        progress_draw "$label${info:+ · $info}"
        ;;
      *) progress_draw "$label${phase:+ · $phase}" ;;
    esac
  done
  progress_clear
  exec {logfd}>&-
}

# Runs CMD in a session of its own, so that step_kill (from a signal trap) can end its
# whole tree; a plain foreground pipeline would hold off the trap until CMD finished.
# CMD's status goes through a file: it ends before the filter has drained its output.
run_step() {
  local kind=$1 label=$2 log=$3 rc
  shift 3
  STEP_PIDFILE=$(mktemp)
  setsid bash -c 'echo $$ >"$0"; "$@"; echo $? >"$0.status"' "$STEP_PIDFILE" "$@" </dev/null 2>&1 |
    progress_filter "$kind" "$label" "$log" &
  wait $! || true
  rc=$(cat "$STEP_PIDFILE.status" 2>/dev/null) || rc=1 # no status: the step was killed
  rm -f "$STEP_PIDFILE" "$STEP_PIDFILE.status"
  STEP_PIDFILE=""
  return "$rc"
}

step_kill() {
  local pid
  [ -n "$STEP_PIDFILE" ] && pid=$(cat "$STEP_PIDFILE" 2>/dev/null) && [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || true
}
