"""The cosine schedules over images seen (R3GAN's): lr, Adam beta2 and the R1/R2 weights, by hand."""

import math

import pytest
import torch

from distgan.config import ConfigError, load
from distgan.schedule import apply, cosine, gammas_at, schedule_at


def cfg(*overrides):
    return load(None, list(overrides), env={})


def test_cosine_by_hand():
    assert cosine(2.0, 1.0, 0, 100) == 2.0
    assert cosine(2.0, 1.0, 50, 100) == pytest.approx(1.5, rel=1e-15)
    assert cosine(2.0, 1.0, 25, 100) == pytest.approx(1.0 + 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-15)
    assert cosine(2.0, 1.0, 100, 100) == 1.0 and cosine(2.0, 1.0, 10**9, 100) == 1.0  # held at the end


def test_lr_beta2_gamma_follow_the_cosine_over_images():
    c = cfg(
        "optim.lr=0.0002",
        "optim.lr_g=0.0004",
        "optim.lr_end=0.00005",
        "optim.betas=[0,0.9]",
        "optim.beta2_end=0.99",
        "optim.cosine_images=6400",
        "loss.r1_gamma=0.1",
        "loss.r2_gamma=0.2",
        "loss.gamma_end=0.01",
    )
    o = c.optim
    half = schedule_at(50, o, 10_000, 0.0, images_per_step=64)  # 3,200 of 6,400 images
    assert half["lr/D"] == pytest.approx((0.0002 + 0.00005) / 2, rel=1e-12)
    assert half["lr/G"] == pytest.approx(2 * half["lr/D"], rel=1e-12)  # G's in proportion
    assert half["beta2"] == pytest.approx((0.9 + 0.99) / 2, rel=1e-12)
    assert gammas_at(c.loss, 3200, 6400) == pytest.approx(((0.1 + 0.01) / 2, (0.2 + 0.02) / 2), rel=1e-12)
    end = schedule_at(200, o, 10_000, 0.0, images_per_step=64)
    assert end["lr/D"] == pytest.approx(0.00005) and end["beta2"] == pytest.approx(0.99)
    assert gammas_at(c.loss, 10**6, 6400) == pytest.approx((0.01, 0.02))
    # applied to a real Adam: the next step uses the scheduled beta2
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], betas=(0.0, 0.9))
    apply(half, opt, opt)
    assert opt.param_groups[0]["betas"] == (0.0, half["beta2"])


def test_defaults_keep_todays_schedules():
    c = cfg("loss.r1_gamma=0.1")
    assert schedule_at(500, c.optim, 1000, 0.0, images_per_step=100) == {"lr/D": 0.0002, "lr/G": 0.0002}
    assert gammas_at(c.loss, 123_456, 1000) == (0.1, 0.0)


def test_span_defaults_to_the_whole_run_and_bad_values_fail():
    o = cfg("optim.lr=0.001", "optim.lr_end=0.0001").optim
    assert schedule_at(500, o, 1000, 0.0, images_per_step=64)["lr/D"] == pytest.approx(0.00055, rel=1e-12)
    with pytest.raises(ConfigError, match="optim.beta2_end schedules Adam's beta2"):
        cfg("optim.name=sgd", "optim.beta2_end=0.99")
    with pytest.raises(ConfigError, match="loss.gamma_end=0.01 schedules the R1/R2 weights"):
        cfg("loss.gamma_end=0.01")
