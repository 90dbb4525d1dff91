"""Metrics in the MNIST classifier's feature space (see ``classifier.py``).

All functions take float tensors: features ``[N, D]`` or class probabilities ``[N, 10]``. Distances
and covariances are computed in float64 on the CPU; nothing here depends on how the samples were split.

- Frechet distance (``fd``): FID's formula (Heusel et al. 2017) in classifier features. It is *not*
  Inception FID and its values are not comparable with published FIDs.
- Classifier score (``cs``): the Inception Score's formula, exp E_x KL(p(y|x) || p(y)); at most 10.
- Mode coverage (``modes``): the histogram of predicted classes, the number of classes above 1/5 of
  uniform, and KL(histogram || uniform) (0 is perfectly balanced, log K is one class).
- Precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds, k=3; density and coverage
  (Naeem et al. 2020), the same k.
"""

from __future__ import annotations

import math

import torch

from distgan.metrics.parzen import sq_dists


def mean_cov(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = feats.double()
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).

    tr((C1 C2)^(1/2)) = sum of sqrt(eigenvalues of C1^(1/2) C2 C1^(1/2)), a symmetric PSD matrix, so
    symmetric eigen-decompositions suffice (no scipy, no complex parts from sqrtm).
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    w, v = torch.linalg.eigh(cov1)
    s1 = (v * w.clamp_min(0).sqrt()) @ v.T
    m = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return ((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt).item()


def fd_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    return frechet_distance(*mean_cov(a), *mean_cov(b))


def classifier_score(probs: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))), the Inception Score's formula over the whole set."""
    p = probs.double().clamp_min(1e-12)
    py = p.mean(0, keepdim=True)
    return math.exp((p * (p.log() - py.log())).sum(1).mean().item())


def mode_coverage(probs: torch.Tensor, num_classes: int | None = None) -> dict:
    """Histogram of argmax classes; classes above 1/5 of uniform; KL(histogram || uniform) in nats."""
    k = num_classes or probs.shape[1]
    hist = torch.bincount(probs.argmax(1), minlength=k).double()
    return histogram_stats(hist)


def histogram_stats(hist: torch.Tensor) -> dict:
    """Modes above 1/5 of uniform, KL(q || uniform) and the extreme shares of a histogram of counts."""
    k = hist.numel()
    hist = hist.double()
    q = hist / hist.sum()
    nz = q > 0
    kl = (q[nz] * (q[nz] * k).log()).sum().item()
    return {
        "modes": int((q > 0.2 / k).sum().item()),
        "modes_total": k,
        "mode_kl": max(kl, 0.0),
        "mode_min_share": q.min().item(),
        "mode_max_share": q.max().item(),
    }


def kth_radii(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded), ``chunk``
    rows at a time (the whole float64 matrix of a 10,000-image set would take 800 MB)."""
    out = []
    for i in range(0, feats.shape[0], chunk):
        d2 = sq_dists(feats[i : i + chunk], feats)
        rows = torch.arange(d2.shape[0])
        d2[rows, rows + i] = float("inf")
        out.append(d2.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(out).sqrt()


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 2048, real_radii: torch.Tensor | None = None
) -> dict:
    """Improved precision/recall (k-NN balls around each set) plus density and coverage.

    precision: share of fakes inside some real k-NN ball. recall: share of reals inside some fake
    k-NN ball. density: mean over fakes of (number of real balls containing it) / k. coverage: share
    of reals whose own ball contains at least one fake.
    """
    r_real = kth_radii(real, k) if real_radii is None else real_radii  # fixed for a reference set: cacheable
    r_fake = kth_radii(fake, k)
    inside_real = torch.zeros(fake.shape[0], dtype=torch.bool)  # fake j in some real ball
    density_count = torch.zeros(fake.shape[0], dtype=torch.float64)
    covered = torch.zeros(real.shape[0], dtype=torch.bool)  # real i's ball holds some fake
    recall_hit = torch.zeros(real.shape[0], dtype=torch.bool)  # real i in some fake ball
    for i in range(0, real.shape[0], chunk):
        d = sq_dists(real[i : i + chunk], fake).sqrt()  # [chunk, n_fake]
        in_real_ball = d <= r_real[i : i + chunk, None]
        inside_real |= in_real_ball.any(0)
        density_count += in_real_ball.double().sum(0)
        covered[i : i + chunk] = in_real_ball.any(1)
        recall_hit[i : i + chunk] = (d <= r_fake[None, :]).any(1)
    return {
        "precision": inside_real.double().mean().item(),
        "recall": recall_hit.double().mean().item(),
        "density": (density_count / k).mean().item(),
        "coverage": covered.double().mean().item(),
    }
