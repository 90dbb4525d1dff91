import math

import numpy as np
import torch

from distgan.metrics.parzen import nearest_neighbour_check, parzen, parzen_ll_from_dists, sq_dists


def brute_parzen_ll(x, samples, sigma):
    """log (1/N) sum_i N(x; s_i, sigma^2 I), written out term by term in float64 numpy."""
    d = x.shape[0]
    terms = [
        -np.sum((x - s) ** 2) / (2 * sigma**2) - d * math.log(sigma) - d / 2 * math.log(2 * math.pi) for s in samples
    ]
    m = max(terms)
    return m + math.log(sum(math.exp(t - m) for t in terms) / len(samples))


def test_parzen_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    samples, test = torch.rand(7, 5, generator=g), torch.rand(4, 5, generator=g)
    for sigma in (0.1, 0.3, 1.0):
        fast = parzen_ll_from_dists(sq_dists(test, samples), sigma, 5)
        slow = [brute_parzen_ll(t.numpy().astype(np.float64), samples.numpy().astype(np.float64), sigma) for t in test]
        np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-10, atol=1e-9)


def test_sigma_is_chosen_on_validation_and_reported_on_test():
    g = torch.Generator().manual_seed(1)
    samples, valid, test = torch.rand(20, 6, generator=g), torch.rand(9, 6, generator=g), torch.rand(11, 6, generator=g)
    sigmas = np.logspace(-1, 0, 10)
    res = parzen(samples, valid, test, sigmas)
    valid_scores = [
        np.mean([brute_parzen_ll(v.double().numpy(), samples.double().numpy(), s) for v in valid]) for s in sigmas
    ]
    best = sigmas[int(np.argmax(valid_scores))]
    assert math.isclose(res["parzen_sigma"], best)
    lls = [brute_parzen_ll(t.double().numpy(), samples.double().numpy(), best) for t in test]
    assert math.isclose(res["parzen_ll"], np.mean(lls), rel_tol=1e-9)
    assert math.isclose(res["parzen_se"], np.std(lls, ddof=1) / math.sqrt(len(lls)), rel_tol=1e-6)


def test_nearest_neighbour_flags_copies():
    g = torch.Generator().manual_seed(2)
    train, test = torch.rand(50, 8, generator=g), torch.rand(30, 8, generator=g)
    copies = nearest_neighbour_check(train[:10].clone(), train, test)
    assert copies["memorised_share"] == 1.0
    fresh = nearest_neighbour_check(torch.rand(30, 8, generator=g), train, test)
    assert fresh["memorised_share"] < 0.2


def test_nearest_distances_exact_against_brute_force():
    """The float32 candidate search with a proven margin, then float64: equal to the float64 brute force,
    including exact copies and near-ties (rows differing in one pixel by 1/255)."""
    from distgan.metrics.parzen import nearest_distances

    g = torch.Generator().manual_seed(3)
    b = torch.randint(0, 256, (300, 784), generator=g).float() / 255.0
    a = torch.cat([b[:5], b[5:10] + 0.0, torch.rand(40, 784, generator=g)])
    a[5:10, 0] += 1 / 255.0  # near-ties
    brute = ((a.double()[:, None, :] - b.double()[None]) ** 2).sum(-1).min(1).values.sqrt()
    got = nearest_distances(a, b, chunk=7)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, brute, rtol=0, atol=1e-12)
    assert (got[:5] == 0).all()
