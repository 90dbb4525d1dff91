#!/usr/bin/env bash
# The body of both sbatch scripts: CONFIG RUN_DIR [section.key=value ...]
#
# The signal chain (each link fails as usually written):
# - `--signal=B:USR1@T` reaches only this batch shell, and bash runs a trap only after a *foreground*
#   command returns: so srun runs in the background and we `wait` for it.
# - The trap asks every process of the job step for a stop with `scancel --signal=USR1` (not the
#   batch shell). node.sh makes the accelerate launcher ignore USR1 (it would die on it); the trainer
#   processes handle it: they agree to stop across ranks at the next log tick, write one checkpoint,
#   record RUN/status.json = stopped (before W&B closes) and leave together after a final barrier.
# - The launcher's exit code is 1 for any non-zero code of its workers, so the requeue decision reads
#   the state in RUN/status.json, not the code.
# - This script, not the trainer, then requeues the job; the requeued job runs this script again and
#   resumes from the latest checkpoint (train.resume=auto), with the same W&B run id.
set -uo pipefail
if [ $# -lt 2 ]; then echo "usage: sbatch slurm/train.sbatch CONFIG RUN_DIR [section.key=value ...]" >&2; exit 2; fi
CONFIG=$1; RUN_DIR=$2; shift 2
cd "${SLURM_SUBMIT_DIR:-.}"
echo "[slurm] job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST} ($(date -Is))"
stop_requested=0
on_signal() {
  echo "[slurm] $1 received: asking the trainer to checkpoint and stop"
  stop_requested=1
  scancel --signal=USR1 "$SLURM_JOB_ID"
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
# Since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch: without it the one task per node
# could get a single core for all its ranks and data workers.
srun --ntasks-per-node=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK} --kill-on-bad-exit=1 \
  bash slurm/node.sh "$CONFIG" "$RUN_DIR" "$@" &
srun_pid=$!
rc=0
while :; do
  wait "$srun_pid"; rc=$?
  kill -0 "$srun_pid" 2>/dev/null || break   # wait returned early because a trapped signal arrived
done
state=$("${DISTGAN_PYTHON:-.venv/bin/python}" -c "import json,sys; print(json.load(open(sys.argv[1]))['state'])" "$RUN_DIR/status.json" 2>/dev/null || echo unknown)
echo "[slurm] training exited with code $rc, run state: $state"
if [ "$stop_requested" = 1 ] && [ "$state" = stopped ]; then
  echo "[slurm] requeueing job $SLURM_JOB_ID to resume from the latest checkpoint"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$rc"
