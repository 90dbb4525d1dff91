#!/usr/bin/env bash
# One task per node (started by srun from slurm/run.sh): derive the launch arguments from SLURM and
# start one trainer process per GPU (or DISTGAN_NPROC CPU processes) through accelerate launch.
set -euo pipefail
CONFIG=$1; RUN_DIR=$2; shift 2
PY="${DISTGAN_PYTHON:-.venv/bin/python}"
eval "$("$PY" -m distgan.slurm)"
echo "[slurm] node $NODE_RANK/$NNODES on $(hostname): $NPROC_PER_NODE processes, main $MAIN_ADDR:$MAIN_PORT, cpu=$USE_CPU, cpus-per-task ${SLURM_CPUS_PER_TASK:-unset}, $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) CPUs usable"
export LOCAL_WORLD_SIZE="$NPROC_PER_NODE"   # srun leaves SLURM_NTASKS_PER_NODE empty; accelerate trips on that
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
[ "$USE_CPU" = 1 ] && export ACCELERATE_USE_CPU=1
trap '' USR1   # the launcher ignores USR1 (inherited); the trainer installs its own handler
ARGS=(-m distgan.train --config "$CONFIG" --run-dir "$RUN_DIR" train.resume=auto "$@")
if [ "$NUM_PROCESSES" -eq 1 ]; then
  exec "$PY" "${ARGS[@]}"
fi
exec "$PY" -m accelerate.commands.launch --multi_gpu --num_machines "$NNODES" --machine_rank "$NODE_RANK" \
  --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT" --num_processes "$NUM_PROCESSES" \
  --mixed_precision no --dynamo_backend no --rdzv_backend static "${ARGS[@]}"
