"""distgan.bench's arithmetic and table, with device names that cannot exist here (no GPU): the peaks a
part gets, the percent of peak, and rows without FLOP counts (the case that used to crash)."""

import pytest

from distgan.bench import format_table, gpu_peak, precision_label, trainer_rows
from distgan.config import load
from tests.helpers import REPO, call


@pytest.mark.parametrize(
    "name, prec, part, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", "H100 SXM", 989.0),
        ("NVIDIA H100 80GB HBM3", "fp32", "H100 SXM", 67.0),  # TF32 off: the CUDA cores' rate, not 494
        ("NVIDIA H100 80GB HBM3", "tf32", "H100 SXM", 494.0),
        ("NVIDIA H100 PCIe", "bf16", "H100 PCIe", 756.0),  # not the SXM part's 989
        ("NVIDIA H100 PCIe", "tf32", "H100 PCIe", 378.0),
        ("NVIDIA H100 NVL", "fp16", "H100 NVL", 835.0),
        ("NVIDIA H200", "bf16", "H200 SXM", 989.0),
        ("NVIDIA H200 NVL", "bf16", "H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", "fp32", "A100", 19.5),
        ("NVIDIA A100 80GB PCIe", "tf32", "A100", 156.0),
    ],
)
def test_gpu_peaks_by_part_and_precision(name, prec, part, peak):
    assert gpu_peak(name, prec) == (part, peak)


def test_unknown_parts_and_precisions_have_no_peak():
    assert gpu_peak("NVIDIA GeForce RTX 4090", "bf16") is None
    assert gpu_peak("Tesla V100-SXM2-32GB", "bf16") is None  # no bf16 on a V100
    assert gpu_peak("Tesla T4", "fp16") == ("T4", 65.0)


def test_precision_labels():
    import torch

    assert precision_label("no", torch.device("cuda", 0), tf32=True) == "tf32"
    assert precision_label("no", torch.device("cuda", 0), tf32=False) == "fp32"
    assert precision_label("no", torch.device("cpu"), tf32=True) == "fp32"
    assert precision_label("bf16", torch.device("cpu"), tf32=True) == "bf16"


def _row(s_per_step, flops, precision, **kw):
    return {
        "s_per_step": s_per_step,
        "flops_step": flops,
        "precision": precision,
        "phases_ms": {"data": 0, "D": 0, "G": 0},
        "peak_mem_mb": 100.0,
        "torch": "2.x",
        "threads": 16,
        "device": "cuda:0",
        "gpu": "NVIDIA H100 PCIe",
        "kernels_step": 160,
        "host_ms": 1.0,
        **kw,
    }


def test_percent_of_peak_and_a_compiled_row_alone():
    cfg = load("configs/mnist_paper.yaml", env={})
    rows = [("textbook", "eager", []), ("trainer", "compiled", [])]
    # 3.57 GFLOP per step in 1 ms: 3.57 TFLOP/s; of the PCIe part's bf16 peak (756): 0.47%
    med = {
        0: _row(4e-3, 3.8e9, "fp32", gemm_gflops=1000.0, host_ms=None),
        1: _row(1e-3, 3.57e9, "bf16", compile_s=30.0),
    }
    text = format_table("configs/mnist_paper.yaml", cfg, rows, med, 100, 1)
    line = next(x for x in text.splitlines() if x.startswith("trainer"))
    assert " 3.570 " in line and " 0.47 " in line and "30.0" in line
    tb = next(x for x in text.splitlines() if x.startswith("textbook"))
    assert " 0.950 " in tb and " 1.86 " in tb  # 0.95 TFLOP/s of the PCIe part's true fp32 peak, 51 (not TF32's 378)
    assert "H100 PCIe" in text and "launch-bound ceiling: 1.00 ms" in text and "100000 img/s" in text
    med[1]["flops_step"] = None  # a row the FLOP counter could not see into: printed, not a crash
    assert "trainer" in format_table("configs/mnist_paper.yaml", cfg, rows, med, 100, 1)


def test_trainer_rows_and_bad_values():
    rows = trainer_rows("no,bf16", "off,reduce-overhead")
    assert [(m, ov[0]) for _, m, ov in rows] == [
        ("eager", "runtime.precision=no"),
        ("cudagraph", "runtime.precision=no"),
        ("eager", "runtime.precision=bf16"),
        ("cudagraph", "runtime.precision=bf16"),
    ]
    assert len(trainer_rows("no", "both")) == 2
    with pytest.raises(ValueError, match="fp8"):
        trainer_rows("fp8", "off")


def test_the_table_refuses_a_config_its_textbook_loop_cannot_feed_before_any_row_starts():
    """The textbook row reads MNIST: a 3-channel config failed inside that row's process ("expected
    input[64, 1, 28, 28] to have 3 channels"). Now a clear error at once, naming what to run instead."""
    p = call("distgan.bench", "--config", str(REPO / "configs" / "stacked_mnist_r3gan.yaml"), check=False)
    assert p.returncode == 2 and "3-channel 28 px images" in p.stderr and "--stream" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert p.stderr.count("distgan: ") == 1


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("transposed", [False, True])
def test_conv_flops_count_groups_in_the_backward(groups, transposed):
    """The bench's FLOPs against the multiply-adds written out: forward 2 * N * H_out * W_out * C_out * C_in /
    groups * 9 (for the transposed layer the input's H, W); each gradient (input, weight) costs the same
    again. torch's own counter charges a grouped layer's weight gradient as dense (groups x too many)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from distgan.bench import _flops

    n, c_in, c_out, hw = 2, 16, 8, 6
    layer = (torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d)(c_in, c_out, 3, padding=1, groups=groups)
    x = torch.randn(n, c_in, hw, hw)
    forward = 2 * n * hw * hw * c_out * (c_in // groups) * 9  # stride 1, padding 1: H_out = H_in
    assert _flops(lambda: layer(x)) == forward
    assert _flops(lambda: layer(x).sum().backward()) == 2 * forward  # weight gradient only: x needs none
    x.requires_grad_(True)
    assert _flops(lambda: layer(x).sum().backward()) == 3 * forward
    with FlopCounterMode(display=False) as torch_count:
        layer(x).sum().backward()
    # torch's count: the same where groups = 1; with groups, the dense weight gradient (torch 2.14), or ours
    # once torch counts groups there.
    assert torch_count.get_total_flops() in (3 * forward, 2 * forward + groups * forward)
    if groups == 1:
        assert torch_count.get_total_flops() == 3 * forward


def test_the_host_time_row_shrinks_every_stage_of_a_per_stage_width_config():
    """The launch-bound figure runs the trainer with the arithmetic taken away; a config with ``model.widths``
    used to keep its 256-channel stages there (host ms 105 instead of 16 for the same kernels)."""
    from distgan.bench import host_config
    from distgan.networks import build_networks

    cfg = load(REPO / "configs/stacked_mnist_r3gan.yaml", ["data.urls=x.tar"])
    tiny = host_config(cfg)
    assert (tiny.train.batch_size, tiny.train.grad_accum) == (8, 1)
    for net in build_networks(tiny):
        convs = [m for m in net.modules() if m.__class__.__name__ == "Conv2d"]
        assert convs and max(max(m.in_channels, m.out_channels) for m in convs) <= 16  # bottlenecks: 2 x 8
    assert (
        max(max(m.in_channels, m.out_channels) for m in build_networks(cfg)[1].modules() if hasattr(m, "in_channels"))
        == 512
    )
