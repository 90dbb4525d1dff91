"""The MNIST feature network behind every learned metric (FD, classifier score, modes, precision/recall).

Inception weights cannot be downloaded on offline clusters, and Inception features say little about
28x28 digits anyway, so distgan ships its own small classifier, trained by
``python -m distgan.metrics.train_classifier`` (>= 99% test accuracy; the figure is stored in the
weights' metadata). Features are the 128-d penultimate layer (after ReLU).
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
    """conv5x5(32) ReLU pool -> conv5x5(64) ReLU pool -> fc 128 ReLU (features) -> dropout -> fc 10."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(FEATURE_DIM, 10)

    @staticmethod
    def prepare(images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 1, 28, 28]`` (or ``[B, 28, 28]``) -> normalised floats."""
        x = images_u8.float().reshape(-1, 1, 28, 28) / 255.0
        return (x - MEAN) / STD

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features ``[B, 128]``, logits ``[B, 10]``) from normalised images."""
        h = self.conv(x).flatten(1)
        feats = torch.relu(self.fc(h))
        return feats, self.head(self.drop(feats))


@lru_cache(maxsize=2)
def load_classifier(path: str | None = None, device: str = "cpu") -> MNISTClassifier:
    """The shipped classifier (or ``path``), in eval mode. Fails with what to run if weights are missing."""
    from safetensors.torch import load_file

    p = Path(path) if path else WEIGHTS
    if not p.exists():
        raise FileNotFoundError(
            f"MNIST classifier weights {p} not found; reproduce them with `python -m distgan.metrics.train_classifier`"
        )
    net = MNISTClassifier()
    net.load_state_dict(load_file(str(p)))
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
