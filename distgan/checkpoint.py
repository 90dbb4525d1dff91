"""Checkpoints: safetensors weights + the training state, written atomically, verified on load.

Layout (the contract later tools build on)::

    RUN/checkpoints/
      step-000001000/
        G.safetensors       generator weights and buffers, plain names (no module./_orig_mod.)
        D.safetensors       discriminator
        G_ema.safetensors   EMA generator (absent when ema.enabled=false)
        state.pt            optimizers, loss scalers, step, images seen, RNG states;
                            loaded with torch.load(weights_only=True): no code runs on load
        manifest.json       step, images seen, data position, resolved config, and for every file
                            its size and sha256; written last, so a directory without it is incomplete
      best/                 the same layout, for the step with the best eval.best_metric so far
      latest                text file naming the newest complete checkpoint directory

A checkpoint is written to ``.tmp-step-*``, every file fsynced, then renamed into place; ``latest``
is replaced atomically afterwards, and only then are old checkpoints beyond ``keep_last`` removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distgan.atomic import atomic_write_text, fsync_dir, fsync_file

NETWORKS = ("G", "D", "G_ema")
"""The networks a checkpoint holds, each as ``{name}.safetensors`` (G_ema absent with ema.enabled=false)."""
WEIGHT_FILES = tuple(f"{n}.safetensors" for n in NETWORKS)
_STEP_DIR = re.compile(r"^step-(\d+)$")


from distgan.errors import CheckpointError  # noqa: E402


def plain_state_dict(module: nn.Module | dict) -> dict[str, torch.Tensor]:
    """State dict (of a module, or a state dict) with DDP/compile prefixes stripped and tensors made
    contiguous on the CPU."""
    out = {}
    sd = module.state_dict() if isinstance(module, nn.Module) else module
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        k = k.replace("._orig_mod.", ".").replace(".module.", ".")
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def step_dirname(step: int) -> str:
    return f"step-{step:09d}"


def save(
    ckpt_root: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    state: dict,
    manifest_extra: dict,
    keep_last: int,
    name: str | None = None,
) -> Path:
    """Write one checkpoint atomically and point ``latest`` at it. Call on one rank only.

    ``name`` (``best``) writes ``ckpt_root/name`` instead, replacing the previous one only once the new
    one is complete; it is never named by ``latest`` nor pruned. A failed write (disk full, a file-size
    limit) leaves no temporary directory, the previous checkpoints and ``latest`` untouched, and raises
    CheckpointError saying so.
    """
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / (name or step_dirname(step))
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files = {}
        for fname, sd in weights.items():
            save_file(sd, str(tmp / fname))
        torch.save(state, tmp / "state.pt")
        for p in sorted(tmp.iterdir()):
            fsync_file(p)
            files[p.name] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        manifest = {
            "format": 1,
            "step": step,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
            **manifest_extra,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        fsync_file(tmp / "manifest.json")
        fsync_dir(tmp)
    except Exception as e:  # OSError, and the errors safetensors and torch.save wrap it in
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_name(ckpt_root) or "none yet"
        raise CheckpointError(
            f"writing checkpoint {final.name} under {ckpt_root} failed: {e} (disk full, quota or a file-size "
            f"limit?). Nothing was replaced: checkpoints/latest still names {kept}. Free space and resume with "
            f"train.resume=auto."
        ) from None
    try:
        if final.exists():  # the same step written again (e.g. a resumed run stopped at once): replace it last
            old = ckpt_root / f".old-{final.name}-{os.getpid()}"  # find_latest_good restores it after a crash here
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        fsync_dir(ckpt_root)
        if name is None:
            atomic_write_text(ckpt_root / "latest", final.name + "\n")
            prune(ckpt_root, keep_last, protect={final.name})
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"finishing checkpoint {final.name} under {ckpt_root} failed: {e}. Free space and "
            f"resume with train.resume=auto (it takes the newest checkpoint that verifies)."
        ) from None
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete-looking checkpoint directories, newest first."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def prune(ckpt_root: Path, keep_last: int, protect: set[str] = frozenset()) -> None:
    for p in list_checkpoints(ckpt_root)[keep_last:]:
        if p.name not in protect:
            shutil.rmtree(p, ignore_errors=True)
    for p in [*ckpt_root.glob(".tmp-*"), *ckpt_root.glob(".old-*")]:  # left by a crash mid-write
        shutil.rmtree(p, ignore_errors=True)


def read_manifest(ckpt: Path) -> dict:
    """A checkpoint's manifest, without checking its files (use verify for that)."""
    try:
        return json.loads((ckpt / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {ckpt / 'manifest.json'}: {e}") from None


def verify(ckpt: Path) -> dict:
    """Check the manifest and every file's size and sha256; return the manifest or raise CheckpointError."""
    mpath = ckpt / "manifest.json"
    if not mpath.is_file():
        raise CheckpointError(f"{mpath} is missing: {ckpt} is not a complete checkpoint")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mpath} is not valid JSON ({e}): the checkpoint is corrupted") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "step" not in manifest:
        raise CheckpointError(f"{mpath} is not a distgan manifest (no step or file list): the checkpoint is corrupted")
    for name, meta in manifest["files"].items():
        p = ckpt / name
        if not p.is_file():
            raise CheckpointError(f"{p} is missing (listed in the manifest)")
        size = p.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"{p} has {size} bytes, the manifest says {meta['bytes']}: truncated or replaced")
        if _sha256(p) != meta["sha256"]:
            raise CheckpointError(f"{p} fails its sha256 check against the manifest: the file is corrupted")
    return manifest


def resolve(path: str | os.PathLike, warn=print) -> Path:
    """A run dir (its latest good checkpoint) or one checkpoint directory -> a checkpoint directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint path {p} does not exist; give a run dir or a checkpoint directory "
            f"such as RUN/checkpoints/step-000001000"
        )
    if (p / "manifest.json").exists() or _STEP_DIR.match(p.name) or p.name == "best":
        return p
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    found = find_latest_good(root, warn=warn)
    if found is None:
        raise CheckpointError(f"no checkpoint found under {p} (looked for {root}/step-*/manifest.json)")
    return found


def latest_name(ckpt_root: Path) -> str | None:
    """The checkpoint name ``checkpoints/latest`` holds, or None before the first checkpoint."""
    latest = ckpt_root / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def find_latest_good(ckpt_root: Path, warn=print) -> Path | None:
    """The newest checkpoint that verifies, trying ``latest`` first; bad ones are reported and skipped.

    ``latest`` naming a directory that does not exist is an error, not a fallback: the checkpoint it named
    was removed by hand, and resuming from an older one would silently drop training.
    """
    candidates = list_checkpoints(ckpt_root)
    latest = ckpt_root / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        named = ckpt_root / name
        olds = sorted(ckpt_root.glob(f".old-{name}-*")) if name and "/" not in name else []
        if not named.exists() and olds:  # a crash between save()'s two renames: the old copy is complete
            os.replace(olds[-1], named)
            warn(f"[distgan] restored {named} from {olds[-1].name} (a checkpoint write was interrupted)")
        if not name or "/" in name or not named.is_dir():
            newest = candidates[0].name if candidates else "none"
            raise CheckpointError(
                f"{latest} names {name!r}, which is not a checkpoint directory (removed?); the newest one present "
                f"is {newest}. Restore it, or resume on purpose with train.resume={ckpt_root / newest} "
                f"(or remove {latest} to let train.resume=auto pick the newest)."
            )
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    for c in candidates:
        try:
            verify(c)
            return c
        except CheckpointError as e:
            warn(f"[distgan] skipping bad checkpoint: {e}; falling back to the previous one")
    return None


def load_weights(ckpt: Path, name: str, module: nn.Module) -> None:
    """Load a safetensors file into a module; a shape or key mismatch names the tensor and both shapes."""
    module.load_state_dict(read_weights(ckpt, name, module))


def read_weights(ckpt: Path, name: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, checked to fit ``module`` (keys and shapes; a mismatch names them)."""
    path = ckpt / name
    try:
        sd = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model of this config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; was it written with another model config?"
        )
    bad = [
        f"tensor {k!r} has shape {list(v.shape)} in the checkpoint but {list(own[k].shape)} in the model"
        for k, v in sorted(sd.items())
        if v.shape != own[k].shape
    ]
    if bad:
        raise CheckpointError(f"{path} was written with an incompatible config: " + "; ".join(bad))
    return sd


def load_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {ckpt / 'state.pt'} safely: {e}") from None


# --------------------------------------------------------------------- the trainer's state <-> the layout
def save_trainer_state(
    ckpt_root: Path, state: dict, manifest_extra: dict, keep_last: int, name: str | None = None
) -> Path:
    """Write ``Trainer.state_dict()`` (``{"networks": {name: state dict}, "training": {...}}``) as one
    checkpoint: each network to its safetensors file, the rest to state.pt. Call on one rank only."""
    weights = {f"{n}.safetensors": plain_state_dict(sd) for n, sd in state["networks"].items()}
    return save(ckpt_root, state["training"]["step"], weights, state["training"], manifest_extra, keep_last, name=name)


def load_trainer_state(ckpt: Path, networks: dict[str, nn.Module]) -> dict:
    """The state that ``save_trainer_state`` wrote, for ``Trainer.load_state_dict``: each network's weights
    checked against ``networks`` (names and shapes; a mismatch names the tensor), state.pt loaded safely.
    A checkpoint without G_ema (ema.enabled=false) gives G's weights for it."""
    out = {}
    for n, module in networks.items():
        fname = f"{n}.safetensors" if n != "G_ema" or (ckpt / "G_ema.safetensors").exists() else "G.safetensors"
        out[n] = read_weights(ckpt, fname, module)
    return {"networks": out, "training": load_state(ckpt)}
