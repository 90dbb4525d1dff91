"""eval.metrics=overfit (distgan/metrics/overfit.py): D's mean logit on training reals, held-out reals and
fakes against hand-computed values, its invariance to D's level and scale, no side effect on D or G, and
the sources it reads (MNIST splits; the first training shards only)."""

import numpy as np
import pytest
import torch
from torch import nn

from distgan.config import load
from distgan.evaluate import main as evaluate_main
from distgan.metrics.overfit import Gap, training_source


class MeanPixel(nn.Module):
    """D(x) = a * mean(x) + b, through a BatchNorm whose running statistics must not move."""

    def __init__(self, a=1.0, b=0.0):
        super().__init__()
        self.a, self.b = a, b
        self.bn = nn.BatchNorm2d(1, affine=False, momentum=1.0)

    def forward(self, x):
        self.bn(x[:, :1])  # in eval mode this reads the running statistics and writes nothing
        return self.a * x.mean(dim=(1, 2, 3)) + self.b


class Constant(nn.Module):
    """G(z) = images of one value (the data range's low end), as many as z has rows."""

    data_range = (-1.0, 1.0)
    z_dim = 4

    def forward(self, z):
        return torch.full((z.shape[0], 1, 4, 4), -1.0)


def _npz(path, value, n):
    np.savez(path, images=np.full((n, 1, 4, 4), value, dtype=np.uint8))
    return str(path)


def test_gap_against_hand_values_and_invariant_to_level_and_scale(tmp_path):
    train, held = _npz(tmp_path / "train.npz", 255, 6), _npz(tmp_path / "held.npz", 51, 5)
    gap = Gap(train, held, str(tmp_path), num=100, noise="normal", seed=0, device="cpu")
    D, G = MeanPixel(), Constant()
    D.train(), G.train()
    before = D.bn.running_mean.clone()
    f = gap.figures(D, G, batch=2)  # batches of 2 over 5 images: the last batch is partial
    # pixels 255 -> 1.0, 51 -> -0.6, fakes -1.0 (data range [-1, 1]); 5 of each (the smaller set's size)
    assert f["d_real_train"] == pytest.approx(1.0) and f["d_real_heldout"] == pytest.approx(-0.6)
    assert f["d_fake"] == pytest.approx(-1.0)
    assert f["d_overfit"] == pytest.approx(1.6 / 2.0)
    assert D.training and G.training and torch.equal(D.bn.running_mean, before)
    g = gap.figures(MeanPixel(a=3.0, b=-7.0), G)
    assert g["d_overfit"] == pytest.approx(f["d_overfit"]) and g["d_fake"] == pytest.approx(-10.0)
    # held-out reals scored like training reals: no overfitting
    same = Gap(train, _npz(tmp_path / "same.npz", 255, 5), str(tmp_path), 100, "normal", 0, "cpu")
    assert same.figures(D, G)["d_overfit"] == pytest.approx(0.0)


def test_sources_and_the_first_training_shards(tmp_path, data_dir):
    cfg = load(None, [f"data.root={data_dir}"], env={})
    assert training_source(cfg) == "mnist:train"
    gap = Gap("mnist:train", "mnist:valid", data_dir, 7, "normal", 0, "cpu")
    train, held = gap._images()
    from distgan.data.mnist import load_split

    assert torch.equal(train, load_split(data_dir, "train")[0][:7])
    assert torch.equal(held, load_split(data_dir, "valid")[0][:7])

    shards = [f"{tmp_path}/s/train-00000{i}.tar" for i in range(4)]
    cfg = load(None, ["data.dataset=webdataset", f"data.urls={tmp_path}/s/train-{{000000..000003}}.tar",
                      "data.holdout_shards=1"], env={})  # fmt: skip
    assert training_source(cfg) == "::".join(shards[:3])
    # only as many training shards are read as `num` needs: the first one here, the others do not exist
    from PIL import Image

    src = tmp_path / "img"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(src / f"{i}.png")
    from tests.helpers import call

    call("distgan.data.make_shards", "--from", str(src), "--out", str(tmp_path / "s"), "--size", "8",
         "--shard-size", "3", "--no-progress")  # fmt: skip
    assert (
        Gap(training_source(cfg), "", str(tmp_path), 2, "normal", 0, "cpu")._load(training_source(cfg), True).shape[0]
        == 2
    )


def test_evaluate_refuses_overfit(capsys):
    assert evaluate_main(["--real", "train", "--metrics", "fd,overfit"]) == 2
    assert "in the run's eval.metrics" in capsys.readouterr().err
