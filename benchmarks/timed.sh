#!/usr/bin/env bash
# benchmarks/timed.sh CMD...: run CMD as a timed benchmark on a shared machine. Holds
# /tmp/shoestring-bench.lock (one timed run at a time), SIGSTOPs every process with nice >= 10 that
# is not a descendant of this run (rescanned every 3 s), resumes them on exit, and prints the UTC
# start/end and load averages. Run everything else under `nice -n 19`.
set -u
exec 9>/tmp/shoestring-bench.lock
echo "[timed] waiting for bench lock..." >&2
flock 9
echo "[timed] start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
STOPPED=/tmp/timed.$$.stopped; : > "$STOPPED"
descendants() { # pids descending from $1
  local p=$1; echo "$p"; for c in $(pgrep -P "$p" 2>/dev/null); do descendants "$c"; done; }
pauser() {
  while true; do
    mine=" $(descendants $$ | tr '\n' ' ') "
    ps -eo pid=,ni= | while read -r pid ni; do
      [ "$ni" = "-" ] && continue
      if [ "$ni" -ge 10 ] 2>/dev/null && [[ "$mine" != *" $pid "* ]]; then
        kill -STOP "$pid" 2>/dev/null && echo "$pid" >> "$STOPPED"
      fi
    done
    sleep 3
  done
}
pauser & PAUSER=$!
cleanup() { kill "$PAUSER" 2>/dev/null; wait "$PAUSER" 2>/dev/null
  sort -u "$STOPPED" | xargs -r kill -CONT 2>/dev/null; rm -f "$STOPPED"
  echo "[timed] end $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2; }
trap cleanup EXIT INT TERM
sleep 4
"$@"
rc=$?
exit $rc
