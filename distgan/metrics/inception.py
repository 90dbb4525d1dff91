"""Inception-v3 features the way the field computes FID: torch-fidelity's feature extractor, offline.

Why torch-fidelity (and not a hand-written Inception, pytorch-fid or torchmetrics): it is the one pip
package whose Inception reproduces the original TensorFlow graph *including its resize* (TF1's bilinear
to 299x299, ``interpolate_bilinear_2d_like_tensorflow1x``), the choice that moves FID by several points
between implementations; it needs no TensorFlow and no scipy; and torchmetrics' FID wraps the same
network. distgan calls its extractor (``FeatureExtractorInceptionV3``, "inception-v3-compat") and its
metric functions; nothing here re-implements either.

Weights are never downloaded at run time. They are looked for, in order, at ``eval.inception_weights``
(or ``--inception-weights``), ``$DISTGAN_INCEPTION_WEIGHTS``, and where torch-fidelity caches them
itself (``torch.hub.get_dir()/checkpoints``, so a user who ran torch-fidelity once online already has
them). A missing or wrong file is an :class:`InceptionWeightsError` (exit 2) that names the file, where
it was looked for, and the one command that fetches it on a machine with internet (:func:`fetch_command`).
"""

from __future__ import annotations

import hashlib
import math
import os
from functools import lru_cache
from pathlib import Path

import torch

from distgan.errors import DataError

WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
"""torch-fidelity's Inception-v3 weights (converted from TensorFlow's 2015-12-05 graph, as every FID uses)."""
WEIGHTS_NAME = WEIGHTS_URL.rsplit("/", 1)[1]
ENV = "DISTGAN_INCEPTION_WEIGHTS"
EXTRACTOR = "inception-v3-compat"
POOL, LOGITS = "2048", "logits_unbiased"
"""The layers the metrics read: the 2048-d pool features (FID, KID, precision/recall) and the unbiased
logits (Inception Score), as torch-fidelity and StyleGAN's metrics do."""
BATCH = 64
"""Images per forward of the extractor (torch-fidelity's default batch size)."""
RESIZE = "torch-fidelity inception-v3-compat: TF1 bilinear to 299x299, grayscale repeated to RGB"
"""How images reach the network; recorded in every reference statistics file."""


class InceptionWeightsError(DataError):
    """The Inception weights are missing or are not the network's weights (exit code 2)."""


def library_cache_path() -> Path:
    """Where torch-fidelity's own download (``torch.hub.load_state_dict_from_url``) keeps the weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def fetch_command(dest: Path | None = None) -> str:
    """The one command that fetches the weights on a machine with internet, into torch-fidelity's cache."""
    dest = dest or library_cache_path()
    return f"mkdir -p {dest.parent} && curl -L -o {dest} {WEIGHTS_URL}"


def candidates(configured: str = "") -> list[tuple[str, Path]]:
    """(where it came from, path) in lookup order."""
    out = []
    if configured:
        out.append(("eval.inception_weights", Path(configured).expanduser()))
    if os.environ.get(ENV):
        out.append((f"${ENV}", Path(os.environ[ENV]).expanduser()))
    out.append(("torch-fidelity's cache", library_cache_path()))
    return out


def find_weights(configured: str = "") -> Path:
    """The first weights file that exists, in :func:`candidates` order; else InceptionWeightsError.

    An explicitly named file (config or environment) that is missing is an error even if the cache holds
    one: a user who names a file means that file."""
    for origin, path in candidates(configured):
        if path.is_file():
            return path.resolve()
        if origin != "torch-fidelity's cache":
            raise InceptionWeightsError(
                f"Inception weights {path} (from {origin}) do not exist. The file expected is torch-fidelity's "
                f"{WEIGHTS_NAME}; on a machine with internet fetch it with: {fetch_command(path)}"
            )
    looked = ", ".join(f"{p} ({o})" for o, p in candidates(configured))
    raise InceptionWeightsError(
        f"Inception weights not found; looked in {looked}. The file expected is torch-fidelity's {WEIGHTS_NAME} "
        f"(nothing is downloaded at run time). On a machine with internet run: {fetch_command()} "
        f"and copy it here, or point eval.inception_weights / ${ENV} at it"
    )


def _architecture_shapes() -> dict[str, tuple[int, ...]]:
    """{state-dict key: shape} of torch-fidelity's Inception, built without loading any weights."""
    return {k: tuple(v.shape) for k, v in _bare_network().state_dict().items()}


def _bare_network():
    """torch-fidelity's InceptionV3 module with its layers initialised by torch and no weights loaded."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    class Bare(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # the constructor's load: skipped, the layers stay as built
            return None

    # The constructor fetches from a URL when given no path; hand it nothing instead (no network here).
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        return Bare(EXTRACTOR, [POOL])


def check_weights(path: Path) -> None:
    """InceptionWeightsError unless ``path`` is a plain tensor file with every key and shape of the network.

    Loaded with ``weights_only=True``: a file that would run code when unpickled is refused here, before
    torch-fidelity loads it (it uses ``weights_only=False``; the same pickle then holds only tensors)."""
    why = None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every unreadable file is reported the same way
        why = f"it is not a PyTorch weights file ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    else:
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            why = "it does not hold a state dict of tensors"
        else:
            want = _architecture_shapes()
            missing = sorted(set(want) - set(sd))
            unexpected = sorted(set(sd) - set(want))
            wrong = sorted(k for k in set(want) & set(sd) if tuple(sd[k].shape) != want[k])
            if missing or unexpected or wrong:
                parts = []
                if missing:
                    parts.append(f"{len(missing)} keys missing (first {missing[0]!r})")
                if unexpected:
                    parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})")
                if wrong:
                    k = wrong[0]
                    parts.append(f"{len(wrong)} wrong shapes (first {k!r}: {tuple(sd[k].shape)}, expected {want[k]})")
                why = "it is not torch-fidelity's Inception-v3: " + "; ".join(parts)
    if why:
        raise InceptionWeightsError(
            f"Inception weights {path}: {why}. The file expected is torch-fidelity's {WEIGHTS_NAME}; on a "
            f"machine with internet fetch it with: {fetch_command(path)}"
        )


@lru_cache(maxsize=8)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def weights_hash(path: Path) -> str:
    """A short sha256 of the weights file: recorded in reference statistics, so other weights never reuse them."""
    st = Path(path).stat()
    return _file_hash(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4)
def _load(path: str, device: str, size: int, mtime_ns: int):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    check_weights(Path(path))
    net = FeatureExtractorInceptionV3(EXTRACTOR, [POOL, LOGITS], feature_extractor_weights_path=path)
    return net.to(device).eval()


def load_extractor(path: Path, device="cpu"):
    """torch-fidelity's extractor with the checked weights at ``path``, on ``device`` (cached per file)."""
    st = Path(path).stat()
    return _load(str(path), str(device), st.st_size, st.st_mtime_ns)


@torch.no_grad()
def features(images_u8: torch.Tensor, extractor, batch_size: int = BATCH, device="cpu") -> dict[str, torch.Tensor]:
    """{"2048": [N, 2048], "logits_unbiased": [N, 1008]} float32 on the CPU from uint8 ``[N, C, H, W]``.

    Any size: the extractor resizes to 299 itself. One channel is repeated to three (StyleGAN, and
    torch-fidelity reading a grayscale file as RGB). ``batch_size`` images per forward: a sample's features
    depend only on the batch it is in, so callers that split work keep the batches fixed (see
    ``distgan.metrics.fidelity.extract``)."""
    if images_u8.dtype != torch.uint8 or images_u8.dim() != 4 or images_u8.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images [N, 1 or 3, H, W], got {images_u8.dtype} {tuple(images_u8.shape)}")
    out: dict[str, list] = {POOL: [], LOGITS: []}
    for i in range(0, images_u8.shape[0], batch_size):
        x = images_u8[i : i + batch_size].to(device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        pool, logits = extractor(x.contiguous())
        out[POOL].append(pool.float().cpu())
        out[LOGITS].append(logits.float().cpu())
    if not out[POOL]:
        return {POOL: torch.empty(0, 2048), LOGITS: torch.empty(0, 1008)}
    return {k: torch.cat(v) for k, v in out.items()}


def write_random_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """A weights file of the real architecture with random weights, in torch-fidelity's format (a
    ``torch.save``d state dict): what the tests and the offline benchmark use in place of the real file.

    He-normal convolutions and unit BatchNorm keep activations of order one through the 94 layers (torch's
    default initialisation shrinks them towards zero, and every distance with them)."""
    from torch import nn

    from distgan.atomic import atomic_path

    net = _bare_network()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()), generator=g)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, math.sqrt(1.0 / m.in_features), generator=g)
                m.bias.zero_()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
    return path
