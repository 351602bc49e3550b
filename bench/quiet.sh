# Sourced by the benchmark scripts: waiting for a quiet machine. The figures are only meaningful
# on an otherwise idle machine (these are shared, and other processes compile on them).
# Set BENCH_NAME (for messages) and QUIET_WAIT_S (how long to wait, seconds) before calling.

# Busy cores over the last second, from /proc/stat (user nice system idle iowait irq softirq).
busy_cores() {
  local a b a1 a2 a3 a4 a5 a6 a7 b1 b2 b3 b4 b5 b6 b7
  read -r _ a1 a2 a3 a4 a5 a6 a7 _ < /proc/stat
  sleep 1
  read -r _ b1 b2 b3 b4 b5 b6 b7 _ < /proc/stat
  a=$((a1 + a2 + a3 + a6 + a7)); b=$((b1 + b2 + b3 + b6 + b7))
  awk -v d=$((b - a)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", d / hz }'
}

# Waits (up to QUIET_WAIT_S) until other processes use less than a quarter of a core; leaves the
# last measured load in LAST_LOAD.
wait_quiet() {
  local waited=0 limit=${QUIET_WAIT_S:-180} load
  while :; do
    load=$(busy_cores)
    if awk -v l="$load" 'BEGIN { exit !(l < 0.25) }'; then LAST_LOAD=$load; return; fi
    if ((waited >= limit)); then
      echo "${BENCH_NAME:-bench}: other processes still use $load cores; measuring anyway" >&2
      LAST_LOAD=$load
      return
    fi
    ((waited == 0)) && echo "${BENCH_NAME:-bench}: waiting for the CPUs to go quiet (busy: $load cores)" >&2
    sleep 4; waited=$((waited + 5))
  done
}

# Busy CPU seconds of the whole machine, to tell how much other processes used during a run.
busy_seconds() { awk '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / '"$(getconf CLK_TCK)"' }' /proc/stat; }
