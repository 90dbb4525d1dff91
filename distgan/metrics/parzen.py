"""Parzen-window log-likelihood with the protocol of Goodfellow et al. 2014 (goodfeli/adversarial).

A Gaussian kernel of width sigma is put on each generated sample (flattened, in [0, 1]); sigma is
chosen on ``numpy.logspace(-1, 0, 10)`` by the mean log-likelihood of the first 1000 validation images
(train[50000:60000]); the figure is the mean log-likelihood of the 10,000 test images and its standard
error. Parzen rewards blur and memorisation (Theis et al. 2016), so :func:`nearest_neighbour_check`
reports beside it how close the samples sit to the training set.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SIGMAS = np.logspace(-1, 0, 10)


def sq_dists(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Squared Euclidean distances ``[len(a), len(b)]`` in float64 (the expansion cancels badly in fp32)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    bn = (b * b).sum(1)
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64)
    for i in range(0, a.shape[0], chunk):
        x = a[i : i + chunk]
        out[i : i + chunk] = ((x * x).sum(1, keepdim=True) + bn - 2.0 * x @ b.T).clamp_min_(0.0)
    return out


def parzen_ll_from_dists(d2: torch.Tensor, sigma: float, dim: int) -> torch.Tensor:
    """log p(x) for each row: log mean_i N(x; s_i, sigma^2 I) from squared distances to the samples."""
    n = d2.shape[1]
    return (
        torch.logsumexp(-d2 / (2 * sigma**2), dim=1)
        - math.log(n)
        - dim * math.log(sigma)
        - 0.5 * dim * math.log(2 * math.pi)
    )


def parzen(samples: torch.Tensor, valid: torch.Tensor, test: torch.Tensor, sigmas=SIGMAS) -> dict:
    """Samples, valid and test as floats in [0, 1] with any trailing shape. Returns the paper's figures."""
    dim = samples[0].numel()
    dv = sq_dists(valid, samples)
    scores = {float(s): parzen_ll_from_dists(dv, float(s), dim).mean().item() for s in sigmas}
    sigma = max(scores, key=scores.get)
    ll = parzen_ll_from_dists(sq_dists(test, samples), sigma, dim)
    return {
        "parzen_ll": ll.mean().item(),
        "parzen_se": (ll.std() / math.sqrt(ll.numel())).item(),
        "parzen_sigma": sigma,
        "parzen_valid_ll": scores[sigma],
        "num_samples": samples.shape[0],
        "num_test": test.shape[0],
    }


def nearest_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of ``a`` to its nearest row of ``b``, exact in float64, ``chunk`` rows at a time.

    Candidates come from float32 distances (half the cost of float64): the float32 expansion
    |x|^2 + |y|^2 - 2 x.y of d-dimensional vectors is off by at most (d + 3) u (|x| + |y|)^2, u = 2**-24
    (each dot product by d u |x||y|, Higham eq. 3.5), so every row of ``b`` within twice that of the
    float32 minimum is re-measured in float64, the true nearest among them.
    """
    a, b = a.flatten(1), b.flatten(1)
    a32, b32 = a.float(), b.float()
    an, bn = (a32 * a32).sum(1), (b32 * b32).sum(1)
    margin = (a.shape[1] + 3) * 2.0**-24 * (an.sqrt() + bn.max().sqrt()) ** 2
    out = []
    for i in range(0, a.shape[0], chunk):
        d2 = (an[i : i + chunk, None] + bn[None, :]).addmm_(a32[i : i + chunk], b32.T, alpha=-2.0)
        lim = d2.min(1).values + 2 * margin[i : i + chunk]
        rows, cols = (d2 <= lim[:, None]).nonzero(as_tuple=True)
        exact = (a[i + rows].double() - b[cols].double()).square().sum(1)
        best = torch.full((d2.shape[0],), float("inf"), dtype=torch.float64)
        out.append(best.scatter_reduce_(0, rows, exact, "amin"))
    return torch.cat(out).sqrt() if out else torch.empty(0, dtype=torch.float64)


def nearest_neighbour_check(
    samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor, held_out_to_train: torch.Tensor | None = None
) -> dict:
    """How close samples sit to the training set, against how close held-out real images sit to it.

    ``memorised_share``: share of samples nearer to their nearest training image than the *nearest*
    test image is to the training set (closer than any real unseen digit: a copy).
    ``closer_than_median_test``: share nearer than the median test image is (1/2 for a perfect model).
    """
    ds = nearest_distances(samples, train)
    dt = nearest_distances(test, train) if held_out_to_train is None else held_out_to_train
    return {
        "nn_train_dist_median": ds.median().item(),
        "test_nn_train_dist_median": dt.median().item(),
        "memorised_share": (ds < dt.min()).double().mean().item(),
        "closer_than_median_test": (ds < dt.median()).double().mean().item(),
    }
