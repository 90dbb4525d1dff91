"""The GPU-only paths, checked on the CPU by what can be observed here: the switches a CUDA run sets, which
generator per-device seeding seeds, CUDA graphs and SyncBatchNorm refused off CUDA (and converted for
CUDA), the EMA's BatchNorm recalibration under SyncBatchNorm, and channels_last against contiguous."""

import copy

import pytest
import torch
from torch import nn

from distgan.config import ConfigError, load
from distgan.ema import GeneratorAverage
from distgan.networks.dcgan import DCGANDiscriminator28, DCGANGenerator28
from distgan.runtime import (
    apply_backend_settings,
    build_accelerator,
    compile_options,
    convert_sync_batchnorm,
    cuda_backend_settings,
    preferred_memory_format,
    seed_step,
    step_generator_index,
    to_memory_format,
)
from tests.helpers import train_here

CUDA0, CUDA1, CPU = torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cpu")
SWITCHES = ("cuda.matmul.allow_tf32", "cudnn.allow_tf32", "cudnn.benchmark")


def read_switch(key: str) -> bool:
    obj = torch.backends
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.fixture
def restore_switches():
    before = {k: read_switch(k) for k in SWITCHES}
    yield
    apply_backend_settings(before)


@pytest.mark.parametrize("tf32", [True, False])
def test_cuda_switches_are_set_as_the_config_says(tf32, monkeypatch, restore_switches):
    """build_accelerator on a CUDA device sets TF32 (matmul and cuDNN) as runtime.tf32 says, and cuDNN's
    benchmark on. No GPU here: accelerate's Accelerator is stood in by one whose device is cuda:0 (the one
    thing that cannot exist on this machine); the switches set are torch's real ones. Each is first set to
    the opposite of what the config asks, so a branch that set nothing fails."""
    import accelerate

    class OnCuda:
        device, num_processes = CUDA0, 1

        def __init__(self, **kwargs):
            pass

    cfg = load(None, [f"runtime.tf32={str(tf32).lower()}"], env={})
    assert cuda_backend_settings(cfg) == {
        "cuda.matmul.allow_tf32": tf32,
        "cudnn.allow_tf32": tf32,
        "cudnn.benchmark": True,
    }
    apply_backend_settings({"cuda.matmul.allow_tf32": not tf32, "cudnn.allow_tf32": not tf32, "cudnn.benchmark": False})
    monkeypatch.setattr(accelerate, "Accelerator", OnCuda)
    build_accelerator(cfg)
    assert {k: read_switch(k) for k in SWITCHES} == {SWITCHES[0]: tf32, SWITCHES[1]: tf32, SWITCHES[2]: True}


def test_cpu_accelerator_leaves_the_cuda_switches_alone(restore_switches):
    """The CPU path (the real Accelerator) sets none of them."""
    apply_backend_settings({k: False for k in SWITCHES})
    acc = build_accelerator(load(None, ["runtime.tf32=true"], env={}))
    assert acc.device.type == "cpu"
    assert not any(read_switch(k) for k in SWITCHES)


def test_a_switch_torch_does_not_have_is_an_error():
    with pytest.raises(AttributeError, match="torch.backends.cudnn.no_such_switch does not exist"):
        apply_backend_settings({"cudnn.no_such_switch": True})


def test_per_device_seeding_seeds_that_devices_generator_only(monkeypatch):
    """seed_step on cuda:1 seeds torch.cuda.default_generators[1], not cuda:0's and not the CPU's. No GPU here:
    the tuple of CUDA generators (empty on this machine) is stood in by two CPU generators; which one gets
    the seed is what is read back."""
    assert step_generator_index(CPU) is None
    assert step_generator_index(CUDA1) == 1
    assert step_generator_index(torch.device("cuda"), current_device=lambda: 3) == 3  # no index: the current one
    assert isinstance(torch.cuda.default_generators, tuple)  # the name seed_step reads exists in this torch

    g0, g1 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)
    monkeypatch.setattr(torch.cuda, "default_generators", (g0, g1))
    cpu_before = torch.default_generator.initial_seed()
    seed_step(CUDA1, 12345)
    assert (g0.initial_seed(), g1.initial_seed()) == (11, 12345)
    assert torch.default_generator.initial_seed() == cpu_before
    seed_step(CPU, 777)
    assert torch.default_generator.initial_seed() == 777 and (g0.initial_seed(), g1.initial_seed()) == (11, 12345)


def test_reduce_overhead_is_cuda_only(tmp_path, data_dir):
    """CUDA graphs: the torch.compile options name the mode on a CUDA device; on the CPU the entry point
    refuses with exit code 2 and says what to use instead."""
    cfg = load(None, ["compile.enabled=true", "compile.mode=reduce-overhead"], env={})
    assert compile_options(cfg, CUDA0) == {"mode": "reduce-overhead", "dynamic": False}
    assert compile_options(load(None, ["compile.enabled=true"], env={}), CPU) == {"mode": None, "dynamic": False}
    with pytest.raises(ConfigError, match="CUDA graphs: GPU only, and this run's device is cpu"):
        compile_options(cfg, CPU)
    p = train_here(tmp_path / "r", "compile.enabled=true", "compile.mode=reduce-overhead", check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "compile.mode=reduce-overhead is CUDA graphs" in p.stderr and "compile.mode=default" in p.stderr
    assert "Traceback" not in p.stderr


def bn_layers(net):
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_sync_batchnorm_converts_for_cuda_and_is_refused_on_cpu():
    """Under DDP on CUDA every BatchNorm becomes SyncBatchNorm with its weights and statistics; one rank or
    the switch off leaves the nets as they are; several CPU ranks are refused with what to do instead.
    (SyncBatchNorm.convert_sync_batchnorm is module surgery: it runs without a GPU.)"""
    torch.manual_seed(0)
    G, D = DCGANGenerator28(z_dim=8, width=4), DCGANDiscriminator28(width=4)
    before = copy.deepcopy(G.state_dict())
    sG, sD = convert_sync_batchnorm([copy.deepcopy(G), D], CUDA0, world=2, enabled=True)  # (in place)
    assert len(bn_layers(sG)) == 3 and all(isinstance(m, nn.SyncBatchNorm) for m in bn_layers(sG))
    assert sG.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in sG.state_dict().items())
    assert not bn_layers(sD)  # D has no normalisation
    for world, enabled in ((1, True), (2, False)):
        same = convert_sync_batchnorm([G, D], CUDA0, world=world, enabled=enabled)
        assert same[0] is G and not any(isinstance(m, nn.SyncBatchNorm) for m in G.modules())
    assert convert_sync_batchnorm([G, D], CPU, world=1, enabled=True)[0] is G
    with pytest.raises(ConfigError, match="model.sync_batchnorm=true needs CUDA devices.*leave it false"):
        convert_sync_batchnorm([G, D], CPU, world=2, enabled=True)


def test_ema_batchnorm_recalibration_with_sync_batchnorm_runs_on_every_rank():
    """With model.sync_batchnorm every rank recomputes the EMA's statistics on the same fixed noise (on GPUs
    SyncBatchNorm all-reduces them; here, with no process group, it normalises as BatchNorm does) and none
    waits for rank 0's broadcast. Without it only rank 0 computes: rank 1's statistics change only through
    the broadcast, a no-op without a process group, so they stay G's (the negative control)."""
    torch.manual_seed(0)
    (G,) = convert_sync_batchnorm([DCGANGenerator28(z_dim=8, width=4)], CUDA0, world=2, enabled=True)
    with torch.no_grad():  # statistics of another distribution than the fixed noise's
        G.train()(torch.randn(32, 8) * 3 + 1)
    before = [b.clone() for b in G.buffers()]

    def average(rank, sync):
        return GeneratorAverage(G, 1000.0, 0.0, 2, 16, 0, lambda n, g: torch.randn(n, 8, generator=g), rank, 2, sync)

    avgs = {(rank, sync): average(rank, sync) for rank in (0, 1) for sync in (True, False)}
    for a in avgs.values():
        assert a.refresh_batchnorm(step=5, device="cpu")
        assert not a.refresh_batchnorm(step=5, device="cpu")  # at most once per step
        assert isinstance(a.module.fc[1], nn.SyncBatchNorm)

    def bufs(a):
        return list(a.module.buffers())

    ref = bufs(avgs[(0, True)])
    assert not torch.equal(ref[0], before[0]), "rank 0 did not recompute the statistics"
    for key in ((1, True), (0, False)):
        assert all(torch.equal(x, y) for x, y in zip(bufs(avgs[key]), ref)), key
    assert all(torch.equal(x, y) for x, y in zip(bufs(avgs[(1, False)]), before))


U = 2.0**-24  # float32 unit roundoff


def conv_bound(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per output element, the most two float32 evaluations of ``layer(x)`` that sum in different orders can
    differ: each output is a dot product of K = C_in x kh x kw weights with inputs, plus the bias; a dot
    product of n terms in any order is within gamma_n sum|terms| of the exact value (gamma_n = n u / (1 - n u),
    Higham, Accuracy and Stability, eq. 3.5), so two orders differ by at most 2 gamma_{K+1} (|W| * |x| + |b|).
    |W| * |x| is the same convolution of the absolute values, in float64."""
    k = layer.weight[0].numel() if isinstance(layer, nn.Conv2d) else layer.weight[:, 0].numel()
    n = k + 1
    gamma = n * U / (1 - n * U)
    ab = copy.deepcopy(layer).double()
    with torch.no_grad():
        ab.weight.abs_()
    ab.bias = None
    bias = layer.bias.detach().abs().double().reshape(1, -1, 1, 1) if layer.bias is not None else 0.0
    return 2 * gamma * (ab(x.detach().abs().double()) + bias)


def test_channels_last_gives_the_contiguous_outputs_within_the_rounding_bound():
    """channels_last (NHWC, what CUDA runs get) against contiguous on the CPU, layer by layer on the inputs
    each convolution of G and D meets in a real forward: every output within the rounding bound of two
    summation orders (conv_bound), and in NHWC for real (a conversion that did nothing would compare the
    contiguous path with itself). Negative controls: a layout mix-up (H and W swapped, as reading NHWC memory
    as NCHW can do) and weights 0.1% off must land 10x outside the bound. Measured here (x86, oneDNN): NHWC
    and NCHW equal bit for bit (0 x the bound), the swap 6e4 x and more, the 0.1% 32x and more."""
    assert preferred_memory_format(CUDA0) == torch.channels_last and preferred_memory_format(CPU) == (
        torch.contiguous_format
    )
    torch.manual_seed(0)
    rgb = (3, 28, 28)  # channels > 1 everywhere: with one channel NHWC and NCHW are the same memory
    G, D = DCGANGenerator28(z_dim=16, width=8, image_shape=rgb).eval(), DCGANDiscriminator28(rgb, width=8)
    z = torch.randn(8, 16)
    for net, inp in ((G, z), (D, torch.rand(8, *rgb) * 2 - 1)):
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        assert len(convs) == 2
        seen = {}

        def keep(m, i, o, seen=seen):
            seen[m] = (i[0].detach(), o.detach())

        hooks = [m.register_forward_hook(keep) for m in convs]
        with torch.no_grad():
            net(inp)
        for h in hooks:
            h.remove()
        nhwc = to_memory_format(copy.deepcopy(net), torch.channels_last)
        nhwc_convs = [m for m in nhwc.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        for layer, fast in zip(convs, nhwc_convs):
            x, y = seen[layer]
            assert fast.weight.is_contiguous(memory_format=torch.channels_last)
            bound = conv_bound(layer, x)
            with torch.no_grad():
                y_cl = fast(x.contiguous(memory_format=torch.channels_last))
                assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
                ratio = ((y_cl.double() - y.double()).abs() / bound).max().item()
                assert ratio <= 1.0, f"{type(layer).__name__}: {ratio:.3g} x the rounding bound"
                swapped = fast(x.transpose(2, 3).contiguous(memory_format=torch.channels_last))
                assert ((swapped.double() - y.double()).abs() / bound).max().item() > 10
                moved = copy.deepcopy(fast)
                moved.weight.mul_(1.001)
                bad = moved(x.contiguous(memory_format=torch.channels_last))
                assert ((bad.double() - y.double()).abs() / bound).max().item() > 10
    mlp = nn.Sequential(nn.Linear(3, 3))
    assert to_memory_format(mlp, torch.channels_last) is mlp
