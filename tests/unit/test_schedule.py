"""The learning-rate and momentum schedule, against hand-computed values."""

import math

import pytest

from distgan.config import load
from distgan.schedule import schedule_at


def opt(*overrides):
    return load(None, list(overrides), env={}).optim


def test_constant_by_default():
    o = opt("optim.lr=0.0002", "optim.lr_g=0.001")
    for step in (0, 1, 5000):
        assert schedule_at(step, o, 10_000, 0.0) == {"lr/D": 0.0002, "lr/G": 0.001}


def test_paper_decay_floor_and_momentum():
    """goodfeli/adversarial: lr 0.1 divided by 1.000004 per step down to 1e-6; momentum 0.5 -> 0.7 by epoch 250."""
    o = opt(
        "optim.name=sgd",
        "optim.lr=0.1",
        "optim.lr_decay=1.000004",
        "optim.min_lr=0.000001",
        "optim.momentum=0.5",
        "optim.final_momentum=0.7",
        "optim.momentum_saturate_epochs=250",
    )
    s = schedule_at(100_000, o, 100_000, 125.0)
    assert s["lr/D"] == pytest.approx(0.1 / 1.000004**100_000, rel=1e-12) and s["lr/G"] == s["lr/D"]
    assert s["momentum"] == pytest.approx(0.6, rel=1e-12)  # half way to epoch 250
    assert schedule_at(10**8, o, 10**8, 1000.0) == {"lr/D": 1e-6, "lr/G": 1e-6, "momentum": 0.7}  # floor, saturated


def test_warmup_and_linear_decay():
    o = opt("optim.lr=0.001", "optim.warmup_steps=10", "optim.linear_decay_start=600")
    assert schedule_at(0, o, 1000, 0)["lr/D"] == pytest.approx(0.0001)  # (0 + 1) / 10 of lr
    assert schedule_at(9, o, 1000, 0)["lr/D"] == pytest.approx(0.001)
    assert schedule_at(800, o, 1000, 0)["lr/D"] == pytest.approx(0.0005)  # half way from 600 to 1000
    assert schedule_at(1000, o, 1000, 0)["lr/D"] == 0.0
    assert math.isclose(schedule_at(599, o, 1000, 0)["lr/G"], 0.001)
