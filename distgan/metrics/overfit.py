"""D's overfitting, measured the way StyleGAN2-ADA shows it (Karras et al. 2020, figure 1): D's outputs on
real images it trains on, on real images it never sees, and on generated ones.

A D that generalises judges held-out reals like the training reals; a D that memorises its training set
judges them more and more like fakes. ``eval.metrics=overfit`` logs, at each in-training evaluation:

- ``d_real_train``, ``d_real_heldout``, ``d_fake``: D's mean logit on ``num`` training reals (the first of
  the training data, a fixed set), on ``num`` held-out reals (MNIST's validation split, or the run's
  held-out shards) and on ``num`` samples of the generator D trains against (G, not its EMA), all without
  augmentation;
- ``d_overfit`` = (d_real_train - d_real_heldout) / (d_real_train - d_fake): 0 while held-out reals score
  like training reals, 1 when they score like fakes. Shifting or scaling D's logits (rpgan's D has no level
  of its own) changes neither it nor its sign.

Rank 0 computes it (D and G are replicas); the images are read once, on first use.
"""

from __future__ import annotations

import torch

from distgan.generate import fixed_noise, to_float


def training_source(cfg) -> str:
    """The ``fidelity.Source`` spec of the reals D trains on: MNIST's training split, or the first training
    shard(s) of a webdataset run (read one shard at a time until ``num`` images, see :meth:`Gap._train`)."""
    from distgan.data.source import split_urls

    if cfg.data.dataset == "mnist":
        return "mnist:train"
    return "::".join(split_urls(cfg.data)[0])


class Gap:
    """``figures(D, G)``: the overfitting figures above, from fixed image sets and fixed noise (``seed``)."""

    def __init__(self, train: str, heldout: str, data_root: str, num: int, noise: str, seed: int, device):
        self.train_spec, self.heldout_spec, self.root = train, heldout, data_root
        self.num, self.noise, self.seed, self.device = num, noise, seed, device
        self.reals: tuple[torch.Tensor, torch.Tensor] | None = None

    def _load(self, spec: str, first_only: bool) -> torch.Tensor:
        from distgan.data.stream import expand_urls
        from distgan.metrics.fidelity import Source

        src = Source(spec, self.root)
        if src.kind != "shards" or not first_only:
            return src.load(self.num)
        parts, have = [], 0
        for url in expand_urls(spec):  # the first training shards only: a large dataset is not read whole
            parts.append(Source(url, self.root).load())
            have += parts[-1].shape[0]
            if have >= self.num:
                break
        return torch.cat(parts)[: self.num]

    def _images(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reals is None:
            train, held = self._load(self.train_spec, True), self._load(self.heldout_spec, False)
            n = min(train.shape[0], held.shape[0])  # equal counts: the two means have the same noise
            self.reals = train[:n], held[:n]
        return self.reals

    @torch.no_grad()
    def figures(self, D: torch.nn.Module, G: torch.nn.Module, batch: int = 500) -> dict[str, float]:
        train, held = self._images()
        z = fixed_noise(train.shape[0], G.z_dim, self.noise, self.seed)

        def mean_logit(images_of) -> float:
            total = 0.0
            for i in range(0, train.shape[0], batch):
                total += D(images_of(i)).float().flatten().sum().item()
            return total / train.shape[0]

        def real(x):
            return lambda i: to_float(x[i : i + batch].to(self.device), G.data_range)

        was = D.training, G.training
        D.eval(), G.eval()  # no dropout, no batch-norm statistics updated by this measurement
        try:
            d_train, d_held = mean_logit(real(train)), mean_logit(real(held))
            d_fake = mean_logit(lambda i: G(z[i : i + batch].to(self.device)))
        finally:
            D.train(was[0]), G.train(was[1])
        margin = d_train - d_fake
        return {
            "d_overfit": (d_train - d_held) / margin if margin else float("nan"),
            "d_real_train": d_train,
            "d_real_heldout": d_held,
            "d_fake": d_fake,
        }
