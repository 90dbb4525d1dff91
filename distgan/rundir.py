"""The run directory: provenance, status, and the choice of the checkpoint a start resumes from.

    RUN/config.yaml     resolved config of the latest start
    RUN/runs.jsonl      one line per start: git commit, versions, world size, resume step, accepted changes
    RUN/status.json     running | finished | stopped | diverged | failed, with the exit code (read by slurm/run.sh)
    RUN/checkpoints/    see distgan.checkpoint

Every check here runs before anything is built or written, so bad input leaves the directory as it was.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from distgan import checkpoint as ckpt_lib
from distgan.atomic import append_line, atomic_write_text
from distgan.config import IDENTITY_KEYS, Config
from distgan.errors import RunDirError  # noqa: E402


def check_usable(run_dir: Path) -> None:
    """Fail before anything is built when ``run_dir`` is a file or its nearest existing parent cannot be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(
            f"--run-dir {run_dir} is a file, not a directory; choose a directory path (it is created "
            f"if missing). Nothing was changed."
        )
    anc = run_dir
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise RunDirError(
            f"--run-dir {run_dir}: {anc} is a file, so the directory cannot be created; choose "
            f"another path. Nothing was changed."
        )
    if not os.access(anc, os.W_OK | os.X_OK):
        raise RunDirError(
            f"--run-dir {run_dir}: {anc} cannot be written (permission denied or a read-only "
            f"file system); choose a writable path. Nothing was changed."
        )


def _flat(cfg: dict) -> dict[str, object]:
    return {f"{s}.{k}": v for s, sec in cfg.items() if isinstance(sec, dict) for k, v in sec.items()}


def identity_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """{key: (checkpoint value, current value)} for every identity key that differs (configs as dicts)."""
    a, b = _flat(saved), _flat(current)
    keys = set()
    for pat in IDENTITY_KEYS:
        if pat.endswith(".*"):
            keys |= {k for k in a.keys() | b.keys() if k.startswith(pat[:-1])}
        else:
            keys.add(pat)
    out = {}
    defaults = _flat(Config().to_dict())
    for k in sorted(keys):
        if k not in a and b.get(k) == defaults.get(k):
            continue  # a key newer than the checkpoint, at its default: the checkpoint's run had that behaviour
        va, vb = a.get(k), b.get(k)
        if isinstance(va, list):
            va = tuple(va)
        if isinstance(vb, list):
            vb = tuple(vb)
        if va != vb:
            out[k] = (va, vb)
    return out


def run_metadata() -> dict:
    """What made this run: git commit of the source tree, package versions, command line, host."""
    from importlib.metadata import PackageNotFoundError, version

    src = Path(__file__).resolve().parent.parent
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    versions = {}
    for pkg in (
        "distgan",
        "torch",
        "torchvision",
        "accelerate",
        "safetensors",
        "wandb",
        "webdataset",
        "einops",
        "numpy",
        "PyYAML",
    ):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": versions,
        "python": sys.version.split()[0],
        "host": platform.node(),
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class RunDir:
    """One run's directory. Read-only methods may run on every rank; writers on rank 0 only."""

    def __init__(self, path: str | os.PathLike, cfg: Config):
        self.path = Path(path).resolve()
        self.cfg = cfg
        self.ckpt_root = self.path / "checkpoints"

    def resume_target(self, warn=print) -> tuple[Path | None, dict[str, tuple], dict | None]:
        """The checkpoint to resume from (None: fresh start), the identity changes accepted for it, and its
        manifest. Every file of the chosen checkpoint is hashed once.

        Raises RunDirError / CheckpointError, before anything is written, when the choice is impossible.
        """
        resume = self.cfg.train.resume
        existing = ckpt_lib.list_checkpoints(self.ckpt_root)
        if resume == "no":
            if existing or (self.ckpt_root / "latest").exists():
                name = existing[0].name if existing else "latest"
                raise RunDirError(
                    f"run dir {self.path} already holds a run (checkpoint {name}); continue it with "
                    f"train.resume=auto or choose a new --run-dir. Nothing was changed."
                )
            return None, {}, None
        if resume == "auto":
            found = ckpt_lib.find_latest_good(self.ckpt_root, warn=warn)
            if found is None and existing:
                raise ckpt_lib.CheckpointError(
                    f"every checkpoint under {self.ckpt_root} failed verification; refusing to start over "
                    f"in a run dir that holds a run. Move it away or choose a new --run-dir."
                )
            manifest = ckpt_lib.read_manifest(found) if found is not None else None  # verified just now
        else:
            found = ckpt_lib.resolve(resume, warn=warn)
            manifest = ckpt_lib.verify(found)
        if found is None:
            return None, {}, None
        return found, self._check_identity(found, manifest), manifest

    def _check_identity(self, ckpt: Path, manifest: dict) -> dict[str, tuple]:
        saved = manifest.get("config")
        if not isinstance(saved, dict):
            raise ckpt_lib.CheckpointError(
                f"{ckpt / 'manifest.json'} holds no config; it was not written by distgan.train and cannot be resumed"
            )
        changes = identity_changes(saved, self.cfg.to_dict())
        allowed = {k.strip() for k in self.cfg.train.allow_changed.split(",") if k.strip()}
        refused = {k: v for k, v in changes.items() if k not in allowed and f"{k.split('.')[0]}.*" not in allowed}
        if refused:
            listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise RunDirError(
                f"resuming {ckpt} with a config that changes what is trained: {listed}. Resume with the "
                f"checkpoint's values, or continue on purpose with train.allow_changed={','.join(refused)} "
                f"(the change is recorded in {self.path / 'runs.jsonl'}). Nothing was changed."
            )
        return changes

    # ---------------------------------------------------------------------------------- writers (rank 0)
    def write_start(self, meta: dict) -> None:
        """config.yaml and one more line in runs.jsonl; the directory is created here, at the first write."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path / "config.yaml", self.cfg.to_yaml())
            # one line per start, so resumes stay visible
            append_line(self.path / "runs.jsonl", json.dumps({**run_metadata(), **meta}))
        except OSError as e:
            raise RunDirError(
                f"--run-dir {self.path} cannot be written ({e.strerror or e}); choose a writable path"
            ) from None

    def write_status(self, state: str, step: int, exit_code: int | None = None) -> None:
        """RUN/status.json: what the run is doing or how it ended; read by slurm/run.sh and users."""
        atomic_write_text(
            self.path / "status.json",
            json.dumps(
                {
                    "state": state,
                    "step": step,
                    "exit_code": exit_code,
                    "pid": os.getpid(),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            )
            + "\n",
        )

    def read_status(self) -> dict | None:
        try:
            return json.loads((self.path / "status.json").read_text())
        except (OSError, ValueError):
            return None
