"""The r3gan networks: shapes at 28/32/64 px with 1 or 3 channels, no normalisation (each image's output is its
own), fix-up initialisation, the [1, 2, 1] resampling, and config errors that name the key."""

import pytest
import torch
from torch import nn

from distgan.config import ConfigError, load
from distgan.networks import build_discriminator, build_generator
from distgan.networks.r3gan import Bottleneck, Resample


@pytest.mark.parametrize("size, channels", [(28, 1), (28, 3), (32, 3), (64, 1)])
def test_shapes_and_no_normalisation(size, channels):
    torch.manual_seed(0)
    shape = (channels, size, size)
    G = build_generator("r3gan", 16, 8, shape, blocks=1, cardinality=4)
    D = build_discriminator("r3gan", 8, shape, blocks=1, cardinality=4)
    x = G(torch.randn(4, 16))
    assert x.shape == (4, *shape) and D(x).shape == (4,)
    norms = (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    assert not any(isinstance(m, norms) for net in (G, D) for m in net.modules())
    grouped = [m for m in D.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert grouped and all(m.groups == 4 for m in grouped)
    # no batch statistics: the real half's logits do not depend on what shares its forward
    y = torch.randn(4, *shape)
    with torch.no_grad():
        assert torch.equal(D(torch.cat([y, x]))[:4], D(torch.cat([y, torch.randn_like(x)]))[:4])


def test_fixup_blocks_start_as_the_identity_and_still_learn():
    torch.manual_seed(0)
    block = Bottleneck(8, 4, total_blocks=6)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x), x)
    block(x).square().sum().backward()
    assert block.conv3.weight.grad.abs().sum() > 0  # the zeroed last layer gets a gradient at once
    # the branch scale M ** (-1/4) of the others: He's std shrinks as the network deepens
    deep, shallow = Bottleneck(8, 4, total_blocks=16), Bottleneck(8, 4, total_blocks=1)
    ratio = deep.conv1.weight.std() / shallow.conv1.weight.std()
    assert 0.35 < ratio < 0.65  # 16 ** -0.25 = 0.5, up to the sampling error of 128 weights


def test_resampling_low_pass_keeps_flat_images_and_removes_the_highest_frequency():
    flat = torch.full((1, 2, 8, 8), 3.0)
    up, down = Resample(2, up=True), Resample(2, up=False)
    assert up(flat).shape == (1, 2, 16, 16) and down(flat).shape == (1, 2, 4, 4)
    assert torch.allclose(up(flat)[..., 1:-1, 1:-1], torch.full((1, 2, 14, 14), 3.0))
    assert torch.allclose(down(flat)[..., 1:, 1:], torch.full((1, 2, 3, 3), 3.0))
    checker = (torch.arange(8).view(8, 1) + torch.arange(8).view(1, 8)) % 2 * 2.0 - 1  # +-1, Nyquist
    assert down(checker.expand(1, 2, 8, 8))[..., 1:, 1:].abs().max() < 1e-6  # no alias left
    assert torch.equal(checker[::2, ::2], torch.full((4, 4), -1.0))  # plain striding would keep it


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model.cardinality=5 must divide .* 2 x model.width = 16"):
        load(
            None, ["model.generator=r3gan", "model.discriminator=r3gan", "model.width=8", "model.cardinality=5"], env={}
        )
    with pytest.raises(ConfigError, match=r"model.blocks, model.cardinality and model.widths apply to .*'r3gan'"):
        load(None, ["model.blocks=2"], env={})
    with pytest.raises(ConfigError, match=r"model r3gan makes \[28, 32, 64\] px .* 48x48"):
        load(
            None,
            [
                "model.generator=r3gan",
                "model.discriminator=r3gan",
                "data.dataset=webdataset",
                "data.urls=x.tar",
                "data.image_size=48",
                "data.channels=3",
            ],
            env={},
        )
    with pytest.raises(ConfigError, match="model.generator='r3gann' is not allowed"):
        load(None, ["model.generator=r3gann"], env={})


def _stage_channels(net, kind):
    """Channels of the Bottlenecks in the order the forward meets them."""
    return [m.conv1.in_channels for m in net.stages if isinstance(m, kind)]


@pytest.mark.parametrize("size, widths", [(28, [48, 24, 8]), (32, [32, 32, 16, 8]), (64, [40, 32, 24, 16, 8])])
def test_per_stage_widths(size, widths):
    """model.widths: each resolution stage has its own channels (lowest resolution first in the config; D
    meets them from the highest), 1x1 transitions only where two stages differ, and the images and logits
    keep their shapes."""
    torch.manual_seed(0)
    shape = (3, size, size)
    G = build_generator("r3gan", 16, 0, shape, blocks=2, cardinality=4, widths=widths)
    D = build_discriminator("r3gan", 0, shape, blocks=2, cardinality=4, widths=widths)
    assert _stage_channels(G, Bottleneck) == [w for w in widths for _ in range(2)]
    assert _stage_channels(D, Bottleneck) == [w for w in widths[::-1] for _ in range(2)]
    changes = sum(a != b for a, b in zip(widths, widths[1:]))
    for net in (G, D):
        trans = [m for m in net.stages if isinstance(m, nn.Conv2d)]
        assert len(trans) == changes and all(m.kernel_size == (1, 1) for m in trans)
    assert G.basis.shape[0] == widths[0] and D.out.in_features == widths[0] and G.to_image.in_channels == widths[-1]
    x = G(torch.randn(3, 16))
    assert x.shape == (3, *shape) and D(x).shape == (3,)


def test_equal_widths_are_the_uniform_network():
    """widths all equal to width builds the very network of width alone (same tensors under one seed), so
    the checkpoints of configs without model.widths still load."""
    nets = []
    for kw in ({}, {"widths": (8, 8, 8)}):
        torch.manual_seed(0)
        nets.append(
            (
                build_generator("r3gan", 16, 8, (1, 28, 28), 1, 4, **kw),
                build_discriminator("r3gan", 8, (1, 28, 28), blocks=1, cardinality=4, **kw),
            )
        )
    for a, b in zip(*nets):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_widths_config_errors_name_the_key():
    r3 = ["model.generator=r3gan", "model.discriminator=r3gan"]
    cfg = load(None, [*r3, "model.widths=[32, 16, 8]", "model.cardinality=4"], env={})
    assert cfg.model.widths == (32, 16, 8) and cfg.to_dict()["model"]["widths"] == [32, 16, 8]
    with pytest.raises(
        ConfigError, match=r"model.widths=\[32, 16\] needs one width per resolution stage: 3 at 28 px \(7, 14, 28\)"
    ):
        load(None, [*r3, "model.widths=[32,16]"], env={})
    with pytest.raises(ConfigError, match=r"model.cardinality=4 must divide .* 2 x model.widths = 6"):
        load(None, [*r3, "model.widths=[32,16,3]", "model.cardinality=4"], env={})
    with pytest.raises(ConfigError, match=r"model.widths\[1\]=0 must be"):
        load(None, [*r3, "model.widths=[32,0,8]"], env={})
    with pytest.raises(ConfigError, match=r"model.widths=7 must be a list"):
        load(None, [*r3, "model.widths=7"], env={})
    with pytest.raises(ConfigError, match=r"model.widths apply to the residual networks"):
        load(None, ["model.widths=[8,8,8]"], env={})


@pytest.mark.slow  # importing the bench's dependencies takes seconds
def test_bench_convs_times_grouped_against_dense():
    """``python -m distgan.bench --convs`` (grouped against dense 3x3, measured, not assumed) runs and prints
    both variants with their conv weights: the dense one holds more (cardinality x those layers')."""
    from tests.helpers import call

    r = call(
        "distgan.bench",
        "--convs",
        "--config",
        "configs/mnist_r3gan.yaml",
        "--steps",
        "1",
        "--repeats",
        "1",
        "model.width=8",
        "train.batch_size=2",
    )
    lines = {ln.split("  ")[0]: ln for ln in r.stdout.splitlines() if " ms " in ln}
    # The trainer's layout on this CPU (NCHW) first, as the baseline; channels-last measured beside it.
    assert list(lines) == ["grouped (cardinality 4) NCHW", "dense 3x3 NCHW", "grouped (cardinality 4) NHWC"], r.stdout
    weights = {k: int(v.rsplit(" ", 1)[1]) for k, v in lines.items()}
    assert (
        weights["dense 3x3 NCHW"] > weights["grouped (cardinality 4) NCHW"] == weights["grouped (cardinality 4) NHWC"]
    )
    assert lines["grouped (cardinality 4) NCHW"].split()[-4] == "1.00x", r.stdout
    with pytest.raises(AssertionError, match="needs a residual discriminator"):
        call("distgan.bench", "--convs", "--config", "configs/debug.yaml")
