"""Launch arguments derived from a SLURM allocation, for slurm/node.sh.

    eval "$(python -m distgan.slurm)"   # NNODES NODE_RANK MAIN_ADDR MAIN_PORT NPROC_PER_NODE NUM_PROCESSES USE_CPU

- nodes and this node's rank: ``SLURM_NNODES``, ``SLURM_NODEID``;
- main address: the first host of ``scontrol show hostnames $SLURM_JOB_NODELIST``;
- port: derived from the job id (20000-39999), so concurrent jobs on shared nodes do not collide
  and a requeued job (same id) reuses it;
- processes per node: the GPUs SLURM allocated on this node (``SLURM_GPUS_ON_NODE``, else
  ``SLURM_GPUS_PER_NODE`` such as ``a100:8``, else ``CUDA_VISIBLE_DEVICES``); without GPUs, CPU
  processes: ``DISTGAN_NPROC`` or 2.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping


def _scontrol_hostnames(nodelist: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def _count_gpus(env: Mapping[str, str]) -> int:
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        v = env.get(key, "").strip()
        if v:
            m = re.search(r"(\d+)\s*$", v.split(",")[0])  # "8", "a100:8", "gpu:a100:8"
            if m:
                return int(m.group(1))
    cvd = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if cvd and cvd not in ("-1", "NoDevFiles"):
        return len([d for d in cvd.split(",") if d])
    return 0


def launch_plan(
    env: Mapping[str, str] = os.environ, hostnames: Callable[[str], list[str]] = _scontrol_hostnames
) -> dict[str, str | int]:
    missing = [k for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST") if not env.get(k)]
    if missing:
        raise RuntimeError(
            f"not inside a SLURM job ({', '.join(missing)} unset): submit with sbatch slurm/train.sbatch"
        )
    nnodes = int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    node_rank = int(env.get("SLURM_NODEID") or 0)
    gpus = _count_gpus(env)
    use_cpu = gpus == 0
    nproc = int(env.get("DISTGAN_NPROC") or 2) if use_cpu else gpus
    return {
        "NNODES": nnodes,
        "NODE_RANK": node_rank,
        "MAIN_ADDR": hostnames(env["SLURM_JOB_NODELIST"])[0],
        "MAIN_PORT": 20000 + int(env["SLURM_JOB_ID"]) % 20000,
        "NPROC_PER_NODE": nproc,
        "NUM_PROCESSES": nnodes * nproc,
        "USE_CPU": int(use_cpu),
    }


def main() -> int:
    try:
        plan = launch_plan()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"distgan.slurm: {e}", file=sys.stderr)
        return 2
    for k, v in plan.items():
        print(f"{k}={shlex.quote(str(v))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
