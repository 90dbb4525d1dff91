"""The shipped MNIST classifier and the metrics in its feature space, on real MNIST and by brute force."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distgan.data.mnist import load_split
from distgan.metrics import scores, suite
from distgan.metrics.classifier import classifier_info, features_and_probs

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def mnist(data_dir):
    train_x, train_y = load_split(data_dir, "train", download=False)
    test_x, test_y = load_split(data_dir, "test", download=False)
    return train_x, train_y, test_x, test_y


def test_classifier_accuracy_on_real_test_set(mnist):
    _, _, test_x, test_y = mnist
    _, probs = features_and_probs(test_x)
    acc = (probs.argmax(1) == test_y).double().mean().item()
    assert acc >= 0.99, f"shipped classifier: {acc:.4f} on the 10,000 MNIST test images"
    assert abs(classifier_info()["test_accuracy"] - acc) < 1e-3, "the weights' metadata states another accuracy"


def test_real_vs_real_floor(mnist, data_dir):
    """The floors of 10,000 real training images against the test set, with tolerances that hold on any CPU
    and torch build, and the premises they rest on checked here, on whatever machine runs this.

    FD and CS: the pinned values are the classifier's run in float64 (FD 2.5030400, CS 9.7724518), which no
    summation order moves; float32 features differ from those by rounding: 2.1e-7 relative at most here (1e-7
    for FD), different but of that size on another CPU. The tolerance, 1e-4 relative, holds FD and CS
    against feature errors of 2**-16 = 1.5e-5 (70x that): the premise check below perturbs every feature by
    2**-16, with random signs and as one uniform scale (the direction FD is most sensitive to: 3.3x), and
    requires the figures to move by less than the tolerance. The mode counts are counts of argmaxes: exact
    wherever no image's two most likely classes are within rounding of each other; the smallest gap
    between their log-probabilities is checked to be above 1e-3 (measured 0.006; float32 logits round at
    1e-6 of their size)."""
    train_x, _, _, _ = mnist
    feats, probs = features_and_probs(train_x[:10_000])
    res = suite.compute(train_x[:10_000], ("fd", "cs", "modes"), data_dir, feats=feats, probs=probs)
    tol = 1e-4
    assert res["fd"] == pytest.approx(2.50304, rel=tol), res
    assert res["cs"] == pytest.approx(9.77245, rel=tol), res
    ref, _ = suite.reference_features(data_dir, "test")
    g = torch.Generator().manual_seed(0)
    eps = 2.0**-16

    def jiggle(t):
        return t * (1 + eps * (torch.randint(0, 2, t.shape, generator=g) * 2 - 1))

    for fa, fb, pa in ((jiggle(feats), jiggle(ref), jiggle(probs)), (feats * (1 + eps), ref, probs * (1 + eps))):
        assert scores.fd_from_features(fa, fb) == pytest.approx(res["fd"], rel=tol)
        assert scores.classifier_score(pa) == pytest.approx(res["cs"], rel=tol)
    top2 = probs.double().clamp_min(1e-300).log().topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-3
    # the class histogram is a count of argmaxes: exact (860 to 1129 images per class of 10,000)
    assert res["modes"] == 10 and res["mode_min_share"] == 0.086 and res["mode_max_share"] == 0.1129, res
    # computed in float64 from those integer counts: a few ulps of log at most
    assert res["mode_kl"] == pytest.approx(0.0023370702237890, rel=1e-12), res


def test_one_class_has_one_mode_and_kl_log10(mnist, data_dir):
    train_x, train_y, _, _ = mnist
    ones = train_x[train_y == 1][:2000]
    res = suite.compute(ones, ("fd", "modes", "cs"), data_dir)
    assert res["modes"] == 1
    assert res["mode_kl"] == pytest.approx(math.log(10), abs=0.05)
    assert res["cs"] < 1.2 and res["fd"] > 100 * 2.5
    exact = scores.histogram_stats(torch.tensor([0, 0, 0, 7, 0, 0, 0, 0, 0, 0.0]))
    assert exact["modes"] == 1 and exact["mode_kl"] == pytest.approx(math.log(10), rel=1e-12)
    uniform = scores.histogram_stats(torch.full((1000,), 26.0))
    assert uniform["modes"] == 1000 and uniform["mode_kl"] == pytest.approx(0.0, abs=1e-12)


def test_blur_scores_worse_fd(mnist, data_dir):
    train_x, _, _, _ = mnist
    sharp = train_x[:5000]
    blurred = F.avg_pool2d(sharp.float(), 3, 1, 1).round().to(torch.uint8)
    fd_sharp = suite.compute(sharp, ("fd",), data_dir)["fd"]
    fd_blur = suite.compute(blurred, ("fd",), data_dir)["fd"]
    assert fd_blur > 10 * fd_sharp, (fd_sharp, fd_blur)


def _np_frechet(a, b):
    """Brute force with numpy: the non-symmetric product C1 C2 and its eigenvalues (another route)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev = np.linalg.eigvals(c1 @ c2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(ev.real.clip(0)).sum())


def test_frechet_distance_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(300, 6, generator=g, dtype=torch.float64) * 2 + 1
    assert scores.fd_from_features(a, b) == pytest.approx(_np_frechet(a.numpy(), b.numpy()), rel=1e-9)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    s1, s2 = torch.tensor([4.0, 1.0]), torch.tensor([1.0, 9.0])
    fd = scores.frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert fd == pytest.approx(8.0 + (2 - 1) ** 2 + (1 - 3) ** 2, rel=1e-12)
    assert scores.fd_from_features(a, a) == pytest.approx(0.0, abs=1e-8)


def test_precision_recall_density_coverage_against_loops():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(40, 3, generator=g, dtype=torch.float64)
    fake = torch.randn(35, 3, generator=g, dtype=torch.float64) * 0.7 + 0.8
    k = 3
    d = lambda x, y: float(((x - y) ** 2).sum().sqrt())  # noqa: E731

    def radius(s, i):
        return sorted(d(s[i], s[j]) for j in range(len(s)) if j != i)[k - 1]

    rr = [radius(real, i) for i in range(len(real))]
    rf = [radius(fake, j) for j in range(len(fake))]
    precision = np.mean([any(d(f, real[i]) <= rr[i] for i in range(len(real))) for f in fake])
    recall = np.mean([any(d(r, fake[j]) <= rf[j] for j in range(len(fake))) for r in real])
    density = np.mean([sum(d(f, real[i]) <= rr[i] for i in range(len(real))) / k for f in fake])
    coverage = np.mean([any(d(real[i], f) <= rr[i] for f in fake) for i in range(len(real))])
    res = scores.precision_recall(real, fake, k=k, chunk=7)  # a chunk that does not divide the set
    assert res["precision"] == pytest.approx(precision)
    assert res["recall"] == pytest.approx(recall)
    assert res["density"] == pytest.approx(density)
    assert res["coverage"] == pytest.approx(coverage)
    assert 0 < res["precision"] < 1 and 0 < res["recall"] < 1


def test_classifier_score_bounds():
    onehot = torch.eye(10).repeat(50, 1)
    assert scores.classifier_score(onehot) == pytest.approx(10.0, rel=1e-6)
    assert scores.classifier_score(torch.full((100, 10), 0.1)) == pytest.approx(1.0, rel=1e-9)


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="fidd"):
        suite.parse_metrics("fd,fidd")
    assert suite.parse_metrics("all") == suite.METRICS
