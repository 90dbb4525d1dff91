"""One entry point for every metric, ``compute(images_u8, metrics, data_root)``, and the one catalogue of
the figures they produce (``FIGURES``: which metric, which direction is better, how it is shown).

Learned metrics use the shipped MNIST classifier (``classifier.py``) and compare against the MNIST test
set, whose features are computed once per classifier and cached (``$DISTGAN_CACHE_DIR``, default
``~/.cache/distgan``) as safetensors. Pixel metrics (``parzen``, ``nn``) use the MNIST splits directly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from distgan.atomic import atomic_path
from distgan.data.mnist import load_split
from distgan.metrics import scores
from distgan.metrics.classifier import WEIGHTS, features_and_probs
from distgan.metrics.parzen import nearest_distances, nearest_neighbour_check, parzen

METRICS = ("fd", "cs", "modes", "pr", "nn", "parzen", "stacked")
"""fd: Frechet distance in classifier features; cs: classifier score; modes: class coverage and KL to
uniform; pr: precision, recall, density, coverage (k=3); nn: nearest-neighbour memorisation check
against the training set; parzen: the paper's Parzen-window log-likelihood; stacked: Stacked MNIST
modes (the classifier on each of the 3 channels; 1000 modes) and KL to uniform."""
INCEPTION_METRICS = ("fid", "kid", "is", "ipr")
"""Metrics in Inception-v3 features (``fidelity.py``), of any images against reference statistics: fid,
kid (unbiased), is (Inception Score), ipr (precision/recall, k=3). They need the Inception weights file
(``inception.py``), so 'all' leaves them out."""
D_METRICS = ("overfit",)
"""Metrics of the discriminator, in-training only (``eval.metrics``; ``overfit.py``): overfit, D's outputs on
training reals, held-out reals and fakes, and how far held-out reals have moved towards fakes."""
RGB_METRICS = {"stacked"}
"""Metrics of 3-channel samples (Stacked MNIST) of any size; the others in METRICS need 1-channel 28x28 MNIST."""
FAST = ("fd", "cs", "modes")
FEATURE_METRICS = {"fd", "cs", "modes", "pr"}


@dataclass(frozen=True)
class Figure:
    metric: str
    """The metric (``--metrics``, ``eval.metrics``) that produces it."""
    lower_is_better: bool
    """Which way is better (``eval.best_metric`` and the report's log scale)."""
    title: str
    """How the console line and the report name it."""
    log_axis: bool = True
    """The report draws a lower-is-better figure on a log axis while every value is positive; False for a
    share that sits near 0 and may cross it."""


FIGURES = {
    "fd": Figure("fd", True, "FD (classifier features)"),
    "cs": Figure("cs", False, "classifier score"),
    "modes": Figure("modes", False, "classes above 1/5 of uniform"),
    "mode_kl": Figure("modes", True, "KL(class histogram || uniform)"),
    "precision": Figure("pr", False, "precision"),
    "recall": Figure("pr", False, "recall"),
    "density": Figure("pr", False, "density"),
    "coverage": Figure("pr", False, "coverage"),
    "memorised_share": Figure("nn", True, "share of samples closer to a training image than any test image"),
    "parzen_ll": Figure("parzen", False, "Parzen log-likelihood (nats)"),
    "stacked_modes": Figure("stacked", False, "Stacked MNIST modes (of 1000)"),
    "stacked_kl": Figure("stacked", True, "Stacked MNIST KL to uniform"),
    "stacked_channel_kl": Figure("stacked", True, "Stacked MNIST: the channels' digit KLs to uniform, summed"),
    "stacked_unsure": Figure(
        "stacked", True, "Stacked MNIST: share of digits read below 0.9 confidence", log_axis=False
    ),
    "fid": Figure("fid", True, "FID (Inception)"),
    "d_overfit": Figure(
        "overfit", True, "D overfitting: held-out reals scored towards fakes (0 none, 1 all)", log_axis=False
    ),
    "kid": Figure("kid", True, "KID (Inception)"),
    "is": Figure("is", False, "Inception Score"),
    "inception_precision": Figure("ipr", False, "precision (Inception)"),
    "inception_recall": Figure("ipr", False, "recall (Inception)"),
}
"""Every figure that can select ``checkpoints/best``, be shown on the console and be plotted by the report."""
LOWER_IS_BETTER = {k for k, f in FIGURES.items() if f.lower_is_better}


def figures_of(metrics) -> list[str]:
    """The figures the given metric names produce, in catalogue order."""
    return [k for k, f in FIGURES.items() if f.metric in set(metrics)]


def parse_metrics(text: str) -> tuple[str, ...]:
    """'all' (every metric of METRICS) or a comma list -> a tuple of metric names; ValueError naming the
    unknown ones."""
    names = METRICS if text.strip() == "all" else tuple(m.strip() for m in text.split(",") if m.strip())
    known = METRICS + INCEPTION_METRICS + D_METRICS
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or [text]}; choose from {list(known)} or 'all'")
    return names


def needs_inception(metrics) -> bool:
    return bool(set(metrics) & set(INCEPTION_METRICS))


def classifier_metrics(metrics) -> tuple[str, ...]:
    """The metrics of ``metrics`` that the MNIST classifier and pixels compute (:func:`compute`)."""
    return tuple(m for m in metrics if m not in INCEPTION_METRICS + D_METRICS)


def metrics_at_28px(metrics) -> list[str]:
    """The classifier metrics of ``metrics`` that compare with MNIST at 28x28 ('stacked' reads any size:
    :func:`stacked_mnist_modes` resizes)."""
    return [m for m in classifier_metrics(metrics) if m not in RGB_METRICS]


def _cache_dir() -> Path:
    return Path(os.environ.get("DISTGAN_CACHE_DIR") or Path.home() / ".cache" / "distgan")


def _classifier_tag() -> str:
    return hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()[:16]


def reference_features(
    data_root: str, split: str = "test", limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier (features, probs) of an MNIST split, cached per classifier weights and split."""
    from safetensors.torch import load_file, save_file

    name = f"mnist-{split}-{limit or 'all'}-{_classifier_tag()}.safetensors"
    path = _cache_dir() / name
    if path.exists():
        try:
            t = load_file(str(path))
            return t["features"], t["probs"]
        except Exception:  # a damaged cache is recomputed, never trusted
            pass
    images = load_split(data_root, split, download=False)[0]
    feats, probs = features_and_probs(images[:limit] if limit else images)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"features": feats.contiguous(), "probs": probs.contiguous()}, str(tmp))
    except OSError:
        pass  # a read-only home only costs recomputation
    return feats, probs


REFERENCES = ("test", "valid")
"""``test``: the 10,000 MNIST test images, for final reports (``distgan.evaluate``). ``valid``:
train[50000:60000], for model selection during training, so the test set never picks a checkpoint."""


def compute(
    images_u8: torch.Tensor,
    metrics=FAST,
    data_root: str = "data",
    feats: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    reference: str = "test",
    classifier: str | None = None,
) -> dict:
    """Every requested metric of uint8 samples ``[N, 1, 28, 28]`` against the MNIST ``reference`` split.

    ``reference="test"``: FD and precision/recall against the test set's features, Parzen's sigma chosen on
    valid[:1000] and the log-likelihood of the test set, the memorisation check against test images.
    ``reference="valid"``: the same with the validation split in the test set's place (Parzen: sigma on
    valid[:1000], log-likelihood of valid[1000:]). ``feats``/``probs`` may be passed when already computed
    (gathered across ranks, for instance).

    ``classifier``: a file of ``train_classifier --shards`` in place of the shipped MNIST classifier; then
    ``reference`` is an image source (``fidelity.Source``: held-out shards, a folder) and fd, cs, modes and
    pr apply, to images of any size.
    """
    if classifier:
        return _compute_custom(images_u8, classifier_metrics(metrics), data_root, feats, probs, reference, classifier)
    if reference not in REFERENCES:
        raise ValueError(f"reference={reference!r}; choose one of {REFERENCES}")
    out: dict = {}
    metrics = classifier_metrics(metrics)  # the Inception ones need reference statistics: fidelity.figures
    if not metrics:
        return out
    channels = images_u8.shape[1]
    if tuple(metrics) == METRICS:  # 'all': every metric that applies to these samples
        metrics = tuple(m for m in METRICS if (m in RGB_METRICS) == (channels == 3))
    wrong = [m for m in metrics if (m in RGB_METRICS) != (channels == 3)]
    if wrong:
        raise ValueError(
            f"metrics {wrong} do not apply to {channels}-channel samples; 'stacked' is for 3-channel "
            f"Stacked MNIST, the others for 1-channel MNIST"
        )
    at_28px = metrics_at_28px(metrics)
    if at_28px and tuple(images_u8.shape[-2:]) != (28, 28):
        raise ValueError(
            f"metrics {at_28px} compare with MNIST at 28x28; these samples "
            f"are {tuple(images_u8.shape[1:])}: use the Inception metrics (fid, kid) or a classifier of your data"
        )
    if "stacked" in metrics:
        out.update(stacked_mnist_modes(images_u8))
    if FEATURE_METRICS & set(metrics):
        if feats is None or probs is None:
            feats, probs = features_and_probs(images_u8)
        ref = lambda: reference_features(data_root, reference)[0]  # noqa: E731
        out.update(_feature_figures(metrics, feats, probs, ref, f"radii3-{reference}-{_classifier_tag()}"))
    if "parzen" in metrics or "nn" in metrics:

        def pixels(split, lo=None, hi=None):
            return load_split(data_root, split, download=False)[0][lo:hi].float().flatten(1) / 255.0

        x = images_u8.float().flatten(1) / 255.0
        held_out = pixels("test") if reference == "test" else pixels("valid", 1000)
        if "parzen" in metrics:
            out.update(parzen(x, pixels("valid", 0, 1000), held_out))
        if "nn" in metrics:
            train = pixels("train")
            out.update(nearest_neighbour_check(x, train, held_out, held_out_to_train=_cached_nearest(train, held_out)))
    return out


CUSTOM_METRICS = ("fd", "cs", "modes", "pr")
"""What a classifier trained on the user's shards computes (``eval.classifier``)."""


def _compute_custom(images_u8, metrics, data_root, feats, probs, reference: str, classifier: str) -> dict:
    from distgan.metrics.classifier import load_classifier
    from distgan.metrics.fidelity import Source

    wrong = [m for m in metrics if m not in CUSTOM_METRICS]
    if wrong:
        raise ValueError(f"metrics {wrong} need MNIST; with a classifier of your own use {list(CUSTOM_METRICS)}")
    out: dict = {}
    if not metrics:
        return out
    net = load_classifier(classifier)
    if feats is None or probs is None:
        feats, probs = features_and_probs(images_u8, net)
    src = Source(reference, data_root)
    tag = f"{src.content_hash()}-{_file_tag(classifier)}" if {"fd", "pr"} & set(metrics) else ""
    ref = lambda: _cached(f"clfref-{tag}", lambda: features_and_probs(src.load(), net)[0])  # noqa: E731
    out.update(_feature_figures(metrics, feats, probs, ref, f"clfradii3-{tag}"))
    return out


def _feature_figures(metrics, feats, probs, reference, radii_name: str) -> dict:
    """fd, cs, modes and pr of samples' classifier ``feats``/``probs``; ``reference()`` gives the reference
    features (called only when fd or pr needs them), whose k-NN radii are cached as ``radii_name``."""
    out: dict = {}
    ref_feats = reference() if {"fd", "pr"} & set(metrics) else None
    if "fd" in metrics:
        out["fd"] = scores.fd_from_features(feats, ref_feats)
    if "cs" in metrics:
        out["cs"] = scores.classifier_score(probs)
    if "modes" in metrics:
        out.update(scores.mode_coverage(probs))
    if "pr" in metrics:
        radii = _cached(radii_name, lambda: scores.kth_radii(ref_feats, 3))
        out.update(scores.precision_recall(ref_feats, feats, k=3, real_radii=radii))
    return out


def _file_tag(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _cached_nearest(train: torch.Tensor, held_out: torch.Tensor) -> torch.Tensor:
    """Distances from each held-out image to its nearest training image (fixed for a dataset: the costly
    half of the memorisation check), cached like the reference features."""

    h = hashlib.sha256()
    for t in (train, held_out):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return _cached(f"nearest-{h.hexdigest()[:16]}", lambda: nearest_distances(held_out, train))


def _cached(name: str, compute) -> torch.Tensor:
    """A tensor from ``$DISTGAN_CACHE_DIR/name.safetensors``, computed and stored on a miss."""
    from safetensors.torch import load_file, save_file

    path = _cache_dir() / f"{name}.safetensors"
    if path.exists():
        try:
            return load_file(str(path))["t"]
        except Exception:  # a damaged cache is recomputed, never trusted
            pass
    t = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"t": t.contiguous()}, str(tmp))
    except OSError:
        pass  # a read-only cache dir only costs recomputation
    return t


def to_28px(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` at 28x28, the classifier's size: resized (bilinear, antialiased) if not."""
    if tuple(images_u8.shape[-2:]) == (28, 28):
        return images_u8
    x = torch.nn.functional.interpolate(images_u8.float(), size=(28, 28), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def stacked_mnist_modes(images_u8: torch.Tensor, sure: float = 0.9) -> dict:
    """Stacked MNIST mode count (the protocol of VEEGAN and PacGAN): classify each channel of
    ``[N, 3, 28, 28]`` samples, mode = 100 a + 10 b + c. ``stacked_modes``: modes with at least one
    sample (the published figure); ``stacked_kl``: KL(mode histogram || uniform over 1000).

    Two figures say where a KL comes from: ``stacked_channel_kl``, the sum over the three channels of
    KL(digit histogram || uniform over 10): the joint KL is exactly this plus the channels' total correlation
    (their dependence, in which the sampling noise of 1000 bins sits: about 0.02 at 26,000 samples of real
    Stacked MNIST, whose joint KL is 0.023 and channel KL 0.004); ``stacked_unsure``, the share
    of channel digits the classifier reads with confidence below ``sure``, malformed digits that land in
    whatever class they resemble (real Stacked MNIST: about 2%).

    Samples of another size (a model trained on ``make_shards --from stacked_mnist --size 32`` or ``64``
    shards) are read at 28 px after an antialiased bilinear resize, the way those shards were made in reverse."""
    images_u8 = to_28px(images_u8)
    probs = [features_and_probs(images_u8[:, c : c + 1].contiguous())[1] for c in range(3)]
    digits = [p.argmax(1) for p in probs]
    code = digits[0] * 100 + digits[1] * 10 + digits[2]
    hist = torch.bincount(code, minlength=1000)
    st = scores.histogram_stats(hist)
    channel_kl = sum(scores.histogram_stats(torch.bincount(d, minlength=10))["mode_kl"] for d in digits)
    unsure = torch.cat([p.max(1).values < sure for p in probs]).double().mean().item()
    return {
        "stacked_modes": int((hist > 0).sum().item()),
        "stacked_kl": st["mode_kl"],
        "stacked_modes_fifth": st["modes"],
        "stacked_channel_kl": channel_kl,
        "stacked_unsure": unsure,
        "stacked_num": int(images_u8.shape[0]),
    }
