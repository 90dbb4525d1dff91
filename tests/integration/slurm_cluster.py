"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd started from a temp dir.

Installs ``slurm-wlm`` and ``munge`` with apt when they are missing (as root). Every daemon is a
child process we own and stop by PID. If SLURM cannot start, :func:`start` raises ``SlurmUnavailable``
with the reason; the tests skip with it, or fail when ``DISTGAN_REQUIRE_SLURM=1`` (CI).

``cred_expire=10``: slurmctld holds a requeued job until the old job's credential has expired (the
default is 120 s); 10 s keeps the preemption test short and leaves SLURM's own safety wait in place.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


class SlurmUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("slurmctld/munged are not installed and this is not root with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {p.stderr[-500:]}")


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 1024
    return 1024


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def start(self) -> Cluster:
        ensure_installed()
        r = self.root
        for d in ("state", "spool", "munge", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = r / "munge" / "munge.sock"
        ncpu = os.cpu_count() or 2
        (r / "slurm.conf").write_text(f"""ClusterName=distgantest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={ncpu} RealMemory={_mem_mb()} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        self._spawn(
            [
                "munged",
                "-F",
                "--force",
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={r}/munge/munged.pid",
                f"--log-file={r}/log/munged.log",
                f"--seed-file={r}/munge/munged.seed",
            ],
            "munged",
        )
        self._wait(lambda: sock.exists(), "munged socket", 20)
        self._spawn(["slurmctld", "-D", "-i", "-f", str(r / "slurm.conf")], "slurmctld")
        self._wait(lambda: self.run(["scontrol", "ping"]).returncode == 0, "slurmctld answering scontrol ping", 30)
        self._spawn(["slurmd", "-D", "-N", "localhost", "-f", str(r / "slurm.conf")], "slurmd")
        self._wait(lambda: "idle" in self.run(["sinfo", "-h", "-o", "%T"]).stdout, "node idle in sinfo", 40)
        return self

    def _spawn(self, cmd, name):
        log = open(self.root / "log" / f"{name}.out", "w")
        p = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        time.sleep(0.3)
        if p.poll() is not None:
            raise SlurmUnavailable(f"{name} exited at once ({p.returncode}): {self.logs(name)}")

    def logs(self, name) -> str:
        out = ""
        for f in (self.root / "log").glob(f"{name}*"):
            out += f.read_text()[-1500:]
        return out

    def _wait(self, cond, what, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if cond():
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SlurmUnavailable(f"timed out waiting for {what}; logs: {self.logs('slurm')[-2000:]}")

    def run(self, cmd, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd,
            env={**self.env, **kw.pop("env", {})},
            capture_output=True,
            text=True,
            timeout=kw.pop("timeout", 60),
            **kw,
        )

    def job_state(self, job_id: str) -> str:
        out = self.run(["scontrol", "show", "job", job_id]).stdout
        for tok in out.split():
            if tok.startswith("JobState="):
                return tok.split("=", 1)[1]
        return "UNKNOWN"

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
