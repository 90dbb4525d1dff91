"""The feature network behind the classifier metrics (FD, classifier score, modes, precision/recall).

Inception weights cannot be downloaded on offline clusters, and Inception features say little about
28x28 digits anyway, so distgan ships its own small MNIST classifier, trained by
``python -m distgan.metrics.train_classifier`` (>= 99% test accuracy; the figure is stored in the
weights' metadata). Features are the 128-d penultimate layer (after ReLU). The same network trained on a
user's labelled shards (``train_classifier --shards``: any size, 1 or 3 channels, any number of classes,
recorded in the file's metadata) gives those metrics for that data (``eval.classifier``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "weights" / "mnist_classifier.safetensors"
MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics, the usual normalisation
FEATURE_DIM = 128


class MNISTClassifier(nn.Module):
    """conv5x5(32) ReLU pool -> conv5x5(64) ReLU pool -> [average to 7x7] -> fc 128 ReLU (features) -> dropout
    -> fc K. At 28 px the averaging is the identity (MNIST's shipped weights); larger images are averaged
    down to 7x7 so one fc layer fits every size."""

    def __init__(self, channels: int = 1, num_classes: int = 10, mean: float = MEAN, std: float = STD):
        super().__init__()
        self.channels, self.num_classes, self.mean, self.std = channels, num_classes, mean, std
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.fc = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def prepare(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` (or MNIST's ``[B, 28, 28]``) -> normalised floats."""
        x = images_u8.float()
        x = x.reshape(-1, 1, 28, 28) if x.dim() == 3 else x
        if x.shape[1] != self.channels:
            raise ValueError(f"the classifier takes {self.channels}-channel images, got {tuple(images_u8.shape)}")
        return (x / 255.0 - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features ``[B, 128]``, logits ``[B, K]``) from normalised images."""
        h = self.conv(x)
        h = (self.pool(h) if h.shape[-2:] != (7, 7) else h).flatten(1)
        feats = torch.relu(self.fc(h))
        return feats, self.head(self.drop(feats))


@lru_cache(maxsize=4)
def load_classifier(path: str | None = None, device: str = "cpu") -> MNISTClassifier:
    """The shipped classifier (or ``path``, one ``train_classifier`` wrote), in eval mode. A missing or
    unreadable file is a DataError (exit 2) saying what to run."""
    from safetensors.torch import load_file

    from distgan.errors import DataError

    p = Path(path) if path else WEIGHTS
    if not p.exists():
        raise DataError(
            f"classifier weights {p} not found; make them with `python -m distgan.metrics.train_classifier`"
            + ("" if path is None else " --shards PATTERN --out FILE")
        )
    try:
        info = classifier_info(str(p))
        net = MNISTClassifier(
            int(info.get("channels", 1)),
            int(info.get("num_classes", 10)),
            float(info.get("mean", MEAN)),
            float(info.get("std", STD)),
        )
        net.load_state_dict(load_file(str(p)))
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: one message
        raise DataError(f"classifier weights {p} cannot be loaded ({type(e).__name__}: {str(e)[:200]})") from None
    return net.to(device).eval()


def classifier_info(path: str | None = None) -> dict:
    """The metadata stored beside the weights: test accuracy, seed, epochs, the command that made it."""
    from safetensors import safe_open

    with safe_open(str(path or WEIGHTS), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


@torch.no_grad()
def features_and_probs(
    images_u8: torch.Tensor, net: MNISTClassifier | None = None, batch_size: int = 1000, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 features ``[N, 128]``, class probabilities ``[N, 10]``) on the CPU, in fixed-size batches
    so a sample's features do not depend on how the set was split (across ranks, for instance)."""
    net = net or load_classifier(device=device)
    feats, probs = [], []
    for i in range(0, images_u8.shape[0], batch_size):
        f, logits = net(net.prepare(images_u8[i : i + batch_size].to(device)))
        feats.append(f.float().cpu())
        probs.append(torch.softmax(logits.double(), 1).float().cpu())
    return torch.cat(feats), torch.cat(probs)
