#!/usr/bin/env bash
# End-to-end Slurm test: starts a private Slurm cluster of one node on localhost (munged, slurmctld,
# slurmd), submits slurm/tiny.sbatch with `sbatch --wait` (8 ranks, TP 2 × PP 2 × DP 2, launched
# by `srun --mpi=pmix`), and checks that the tiny model trained: 5 metric lines with finite losses,
# rank 0 saw 8 ranks in layout (t=2, p=2, d=2), the job COMPLETED with exit code 0. Then it submits
# slurm/glm130b_serve.sbatch on 4 CPU ranks (two replicas of tensor 2, the tiny weights), sends
# requests to the endpoint, stops the job with SIGUSR1 as Slurm does before a time limit, and
# checks that it COMPLETED with exit code 0 and that both replicas answered.
#
#   tests/slurm/slurm_test.sh PATH/TO/glmrt
#
# Installs nothing: exits 77 (CTest: skipped) when Slurm or munge is not installed or when not
# run as root. Everything lives in a temporary directory: slurm.conf (SLURM_CONF is exported for
# every client), state, spool, logs, a munge key and socket of its own (AuthInfo=socket=...), so
# an existing munged or Slurm on the machine is neither used nor disturbed. The daemons it
# started are stopped by PID on exit (trap), and the directory is removed
# (GLMRT_SLURM_KEEP=1 keeps it). Every Slurm client runs under `timeout`.
set -euo pipefail

GLMRT_BIN=${1:?usage: slurm_test.sh PATH/TO/glmrt}
PATH=$PATH:/usr/sbin:/sbin
STEPS=5

skip() { echo "SKIP: $*"; exit 77; }
die() { echo "FAIL: $*" >&2; exit 1; }

for cmd in slurmctld slurmd sbatch srun sinfo squeue scontrol scancel munged setpriv; do
  command -v "$cmd" >/dev/null || skip "slurm not installed ($cmd missing; Debian: slurmctld slurmd slurm-client munge)"
done
[[ $(id -u) -eq 0 ]] || skip "needs root (slurmd, and munged started as user munge)"
id munge >/dev/null 2>&1 || skip "no user munge (Debian package munge)"
[[ -x $GLMRT_BIN ]] || die "glmrt binary $GLMRT_BIN is not executable"
GLMRT_BIN=$(cd "$(dirname "$GLMRT_BIN")" && pwd)/$(basename "$GLMRT_BIN")
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Under /tmp, not $TMPDIR: user munge must be able to reach the socket, and its path must stay short.
WORK=$(mktemp -d /tmp/glmrt-slurm.XXXXXX)
chmod 0711 "$WORK"  # munged (user munge) must reach its own directory below
MUNGED_PID="" SLURMCTLD_PID="" SLURMD_PID="" SBATCH_PID="" JOB_ID=""
export SLURM_CONF=$WORK/slurm.conf

# Stops what this script started, by PID: SIGTERM, up to 15 s, then SIGKILL.
stop_pid() {
  local name=$1 pid=$2 i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "slurm_test: $name ($pid) ignored SIGTERM; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

show_logs() {
  local f
  for f in "$WORK"/job-*.out "$WORK/slurmctld.log" "$WORK/slurmd.log" "$WORK/munge/munged.log"; do
    [[ -f $f ]] || continue
    echo "----- ${f#"$WORK"/} (last 40 lines) -----" >&2
    tail -n 40 "$f" >&2
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  trap '' PIPE  # a closed stdout (e.g. `| head`) must not stop the cleanup
  set +e
  [[ -n $SBATCH_PID ]] && kill -TERM "$SBATCH_PID" 2>/dev/null
  # A job still running (e.g. sbatch timed out): cancel it while slurmd can still end its tasks.
  if [[ -n $SLURMCTLD_PID && -n $JOB_ID && -n $(timeout 5 squeue -h -j "$JOB_ID" -o %i 2>/dev/null) ]]; then
    echo "slurm_test: cancelling job $JOB_ID" >&2
    timeout 10 scancel "$JOB_ID" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
      [[ -z $(timeout 5 squeue -h -j "$JOB_ID" -o %i 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
  ((rc == 0)) || show_logs
  stop_pid slurmd "$SLURMD_PID"
  stop_pid slurmctld "$SLURMCTLD_PID"
  stop_pid munged "$MUNGED_PID"
  if [[ ${GLMRT_SLURM_KEEP:-0} == 1 ]]; then
    echo "slurm_test: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

# Two TCP ports nobody listens on (a connect to a free port is refused), below Linux's ephemeral
# range (32768-60999) so that no outgoing connection takes them meanwhile.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    [[ $p != "${1:-}" ]] && port_free "$p" && { echo "$p"; return 0; }
  done
  die "no free TCP port found"
}
CTLD_PORT=$(pick_port)
SLURMD_PORT=$(pick_port "$CTLD_PORT")

# --- munged: a private instance (own key, socket, log), as user munge --------------------------
mkdir -p "$WORK/munge"
chown munge:munge "$WORK/munge"
chmod 0711 "$WORK/munge"  # munged: the socket directory must be searchable by all
if command -v mungekey >/dev/null; then
  setpriv --reuid=munge --regid=munge --init-groups mungekey --create --keyfile="$WORK/munge/munge.key"
else
  dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
  chown munge:munge "$WORK/munge/munge.key"
fi
chmod 0400 "$WORK/munge/munge.key"
MUNGE_SOCKET=$WORK/munge/munge.socket
setpriv --reuid=munge --regid=munge --init-groups \
  munged --foreground --socket="$MUNGE_SOCKET" --key-file="$WORK/munge/munge.key" \
  --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/munge/munged.log" \
  --seed-file="$WORK/munge/munged.seed" >"$WORK/munge/munged.out" 2>&1 &
MUNGED_PID=$!
for ((i = 0; i < 100; i++)); do
  [[ -S $MUNGE_SOCKET ]] && break
  kill -0 "$MUNGED_PID" 2>/dev/null || { cat "$WORK/munge/munged.out" >&2; die "munged did not start"; }
  sleep 0.1
done
[[ -S $MUNGE_SOCKET ]] || die "munged did not create $MUNGE_SOCKET within 10 s"

# --- slurm.conf ---------------------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
mkdir -p "$WORK/state" "$WORK/spool" "$WORK/tmp"
cat >"$SLURM_CONF" <<EOF
# Written by tests/slurm/slurm_test.sh: a one-node cluster on localhost.
ClusterName=glmrt-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
TmpFS=$WORK/tmp
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MailProg=/bin/true
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=30 State=UP
EOF

# --- slurmctld, slurmd ----------------------------------------------------------------------------
slurmctld -D -i -f "$SLURM_CONF" >"$WORK/slurmctld.out" 2>&1 &
SLURMCTLD_PID=$!
slurmd -D -N localhost -f "$SLURM_CONF" >"$WORK/slurmd.out" 2>&1 &
SLURMD_PID=$!

state=""
for ((i = 0; i < 60; i++)); do
  kill -0 "$SLURMCTLD_PID" 2>/dev/null || { cat "$WORK/slurmctld.out" >&2; die "slurmctld exited"; }
  kill -0 "$SLURMD_PID" 2>/dev/null || { cat "$WORK/slurmd.out" >&2; die "slurmd exited"; }
  state=$(timeout 10 sinfo -h -n localhost -o %t 2>/dev/null || true)
  [[ $state == idle ]] && break
  sleep 0.5
done
[[ $state == idle ]] || die "node localhost is not idle after 30 s (state '${state:-no answer}')"
timeout 10 srun --mpi=list 2>&1 | grep -q pmix ||
  die "Slurm has no pmix MPI plugin (srun --mpi=list); slurm/tiny.sbatch launches with srun --mpi=pmix"

# --- the tiny training job ----------------------------------------------------------------------
METRICS=$WORK/metrics.jsonl
export GLMRT_BIN
export CONFIG=$REPO/tests/golden/train_config.yaml
export INIT_WEIGHTS=$REPO/tests/golden/tiny_weights.safetensors
echo "slurm_test: cluster up (slurmctld :$CTLD_PORT, slurmd :$SLURMD_PORT); submitting slurm/tiny.sbatch"
start=$SECONDS
# In the background so that a signal to this script runs the cleanup at once (bash defers traps
# while a foreground command runs); --parsable prints the job id at submission.
timeout 300 sbatch --wait --parsable --chdir="$WORK" --output="$WORK/job-%j.out" --time=5 \
  "$REPO/slurm/tiny.sbatch" --set train.steps=$STEPS --set "train.metrics=$METRICS" >"$WORK/sbatch.out" &
SBATCH_PID=$!
for ((i = 0; i < 100; i++)); do
  [[ -s $WORK/sbatch.out ]] || ! kill -0 "$SBATCH_PID" 2>/dev/null && break
  sleep 0.1
done
JOB_ID=$(head -n 1 "$WORK/sbatch.out")
JOB_ID=${JOB_ID%%;*}
rc=0
wait "$SBATCH_PID" || rc=$?
SBATCH_PID=""
((rc != 124)) || die "sbatch --wait did not return within 300 s (job ${JOB_ID:-?})"
((rc == 0)) || die "sbatch --wait exited $rc (job ${JOB_ID:-?})"
echo "slurm_test: job $JOB_ID finished in $((SECONDS - start)) s"

LOG=$WORK/job-$JOB_ID.out
[[ -f $LOG ]] || die "no job log $LOG"
job=$(timeout 10 scontrol show job "$JOB_ID" 2>/dev/null || true)
[[ $job == *"JobState=COMPLETED"* && $job == *"ExitCode=0:0"* ]] ||
  die "job $JOB_ID did not complete cleanly: $(grep -o 'JobState=[^ ]*\|ExitCode=[^ ]*' <<<"$job" | tr '\n' ' ')"
grep -qF "on 8 rank(s), layout (t=2, p=2, d=2)" "$LOG" ||
  die "the job log lacks rank 0's line 'on 8 rank(s), layout (t=2, p=2, d=2)'"
[[ -f $METRICS ]] || die "no metrics file $METRICS"
lines=$(wc -l <"$METRICS")
((lines == STEPS)) || die "$METRICS has $lines lines, expected $STEPS"
# Every line: "iteration":k in order and a finite number for "loss" (nlohmann writes NaN/inf as null).
awk '
  { it = ""; loss = "" }
  match($0, /"iteration":[0-9]+/) { it = substr($0, RSTART + 12, RLENGTH - 12) }
  match($0, /"loss":[^,}]*/) { loss = substr($0, RSTART + 7, RLENGTH - 7) }
  it != NR { printf "line %d: iteration %s, expected %d\n", NR, it, NR; bad = 1 }
  loss !~ /^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$/ { printf "line %d: loss %s is not finite\n", NR, loss; bad = 1 }
  END { exit bad }' "$METRICS" >&2 || die "bad metrics in $METRICS"
echo "slurm_test: OK: job $JOB_ID trained $STEPS steps on 8 ranks (t=2, p=2, d=2) under Slurm:"
grep -F " iteration " "$LOG" || true

# --- the serving job: slurm/glm130b_serve.sbatch on 4 CPU ranks, two replicas of tensor 2 -------
# Submitted as a copy without its GPU-node #SBATCH lines (8 tasks and 8 GPUs per node, 14 CPUs per
# task: this node has 2 CPUs and no GPUs, and sbatch cannot take a directive back), as 4 tasks.
# Checks: the endpoint answers /health, a greedy /generate and 8 concurrent requests; SIGUSR1 to
# the batch shell (what Slurm sends before the time limit) stops every rank cleanly, the job
# COMPLETES with exit code 0, and both replicas answered.
echo "slurm_test: submitting slurm/glm130b_serve.sbatch (4 ranks: 2 replicas of tensor 2)"
sed -E '/^#SBATCH --(ntasks-per-node|gpus-per-node|cpus-per-task|exclusive|mem)=?/d' \
  "$REPO/slurm/glm130b_serve.sbatch" >"$WORK/serve.sbatch"
JOB_ID=$(CONFIG=$REPO/tests/golden/train_config.yaml WEIGHTS=$REPO/tests/golden/tiny_weights.safetensors \
  LOAD="" TENSOR=2 PIPELINE=1 DATA=2 DEVICE=cpu HOST=127.0.0.1 PORT=0 OMP_NUM_THREADS=1 \
  timeout 30 sbatch --parsable --chdir="$WORK" --output="$WORK/job-%j.out" --time=5 --nodes=1 \
  --ntasks=4 --overcommit "$WORK/serve.sbatch") || die "sbatch of slurm/glm130b_serve.sbatch failed"
JOB_ID=${JOB_ID%%;*}
LOG=$WORK/job-$JOB_ID.out
port=""
for ((i = 0; i < 600; i++)); do
  port=$(grep -o 'glmrt serve: listening on http://127\.0\.0\.1:[0-9]*' "$LOG" 2>/dev/null | sed 's/.*://') || true
  [[ -n $port ]] && break
  [[ -n $(timeout 5 squeue -h -j "$JOB_ID" -o %i 2>/dev/null) ]] || die "serve job $JOB_ID ended before listening"
  sleep 0.2
done
[[ -n $port ]] || die "serve job $JOB_ID: no 'listening on' line within 120 s"
grep -q 'glm-130b-serve: serving on localhost (world rank 0)' "$LOG" ||
  die "the serve script did not announce its endpoint"
post() {  # post BODY: prints the status, then the body
  timeout 60 curl -s -o "$WORK/post.out" -w '%{http_code}\n' -H 'Content-Type: application/json' \
    --data-binary "$1" "http://127.0.0.1:$port/generate" && cat "$WORK/post.out"
}
health=$(timeout 10 curl -s "http://127.0.0.1:$port/health") || true
[[ $health == *'"status":"ok"'* ]] || die "serve job: /health answered '$health'"
answer=$(post '{"prompt_ids": [5, 9, 17, 33], "sampling_strategy": "greedy", "out_seq_length": 16}')
[[ $answer == 200* && $answer == *'"output_ids"'* ]] || die "serve job: /generate answered '$answer'"
pids=()
for k in 1 2 3 4 5 6 7 8; do
  timeout 120 curl -s -o "$WORK/concurrent-$k.out" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "{\"prompt_ids\": [$k, 12, 20], \"seed\": $k, \"temperature\": 0.9, \"out_seq_length\": 20}" \
    "http://127.0.0.1:$port/generate" >"$WORK/concurrent-$k.code" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
for k in 1 2 3 4 5 6 7 8; do
  [[ $(cat "$WORK/concurrent-$k.code") == 200 ]] ||
    die "serve job: concurrent request $k got $(cat "$WORK/concurrent-$k.code"): $(head -c 300 "$WORK/concurrent-$k.out")"
done
timeout 10 scancel --signal=USR1 --batch "$JOB_ID" || die "scancel --signal=USR1 --batch $JOB_ID failed"
for ((i = 0; i < 300; i++)); do
  [[ -z $(timeout 5 squeue -h -j "$JOB_ID" -o %i 2>/dev/null) ]] && break
  sleep 0.2
done
[[ -z $(timeout 5 squeue -h -j "$JOB_ID" -o %i 2>/dev/null) ]] || die "serve job $JOB_ID still running 60 s after SIGUSR1"
job=$(timeout 10 scontrol show job "$JOB_ID" 2>/dev/null || true)
[[ $job == *"JobState=COMPLETED"* && $job == *"ExitCode=0:0"* ]] ||
  die "serve job $JOB_ID did not complete cleanly: $(grep -o 'JobState=[^ ]*\|ExitCode=[^ ]*' <<<"$job" | tr '\n' ' ')"
grep -q 'glmrt serve: stopped' "$LOG" || die "serve job: no 'glmrt serve: stopped' line"
counts=$(grep -o 'queries answered per replica: [0-9]*, [0-9]*' "$LOG" | sed 's/.*: //') ||
  die "serve job: no 'queries answered per replica' line"
[[ ${counts%%,*} -ge 1 && ${counts##*, } -ge 1 ]] || die "serve job: a replica answered nothing ($counts)"
JOB_ID=""
echo "slurm_test: OK: serve job answered 9 requests on 2 replicas ($counts) and stopped on SIGUSR1"
