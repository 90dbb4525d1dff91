"""Compiled vs eager step by step, and fp16's two loss scalers (scaler logic exercised on the CPU)."""

import pytest
import torch

from distgan.config import load
from distgan.phases import GANStep, Net
from distgan.trainer import Trainer

SMALL = ["model.width=32", "train.batch_size=16", "train.progress=false", "wandb.mode=disabled", "ema.enabled=false"]


def make(tmp_path, name, data_dir, extra=()):
    cfg = load(None, [*SMALL, *extra], env={"DISTGAN_DATA_DIR": data_dir})
    return Trainer(cfg, tmp_path / name)


def params(tr):
    return {f"G.{k}": v for k, v in tr.G.net.named_parameters()} | {f"D.{k}": v for k, v in tr.D.net.named_parameters()}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compiled_equals_eager_after_every_step(tmp_path, data_dir):
    # fallback_random: inductor draws dropout masks from the same generator as eager.
    eager = make(tmp_path, "eager", data_dir, ["compile.fallback_random=true"])
    comp = make(tmp_path, "comp", data_dir, ["compile.enabled=true", "compile.fallback_random=true"])
    for a, b in zip(params(eager).values(), params(comp).values()):
        assert torch.equal(a, b)
    prev = {k: v.detach().clone() for k, v in params(comp).items()}
    from torch._dynamo.utils import counters

    counters.clear()
    graphs = []
    for step in range(4):  # D and G phases alternate: requires_grad flips on D every step
        eager.train_step(step)
        comp.train_step(step)
        graphs.append(counters["stats"]["unique_graphs"])
        pe, pc = params(eager), params(comp)
        for k in pe:
            torch.testing.assert_close(pc[k], pe[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"step {step} {k}: {m}")
            assert not torch.equal(pc[k], prev[k]), f"step {step}: compiled {k} got no update"
        prev = {k: v.detach().clone() for k, v in pc.items()}
    # The compiler really ran (a silent fallback to eager would compare eager with eager): dynamo captured
    # graphs and AOTAutograd compiled them; and after the first step nothing recompiles (one static graph
    # per network and phase: D at 2B in its phase and B in G's, G with and without grad).
    assert counters["frames"]["ok"] > 0 and counters["aot_autograd"]["ok"] > 0, dict(counters)
    assert graphs[0] >= 4 and graphs == [graphs[0]] * 4, graphs


def test_fp16_two_scalers_overflow_in_d_skips_only_d(tmp_path, data_dir):
    tr = make(tmp_path, "s", data_dir)
    scalers = {n: torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000) for n in "GD"}
    G = Net(tr.G.net, tr.G.fwd, tr.G.train_fwd, tr.G.opt, scalers["G"], "G")
    D = Net(tr.D.net, tr.D.fwd, tr.D.train_fwd, tr.D.opt, scalers["D"], "D")
    gan = GANStep(tr.acc, G, D, tr.gan.loss, "no")
    x = tr.real_batch(0, 0).clone()
    x[0] = float("inf")  # D's loss and gradients overflow
    d0 = {k: v.detach().clone() for k, v in tr.D.net.named_parameters()}
    g0 = {k: v.detach().clone() for k, v in tr.G.net.named_parameters()}
    gan.d_step([x], [tr.noise(tr.micro)])
    gan.g_step([tr.noise(tr.micro)])
    assert all(torch.equal(v, d0[k]) for k, v in tr.D.net.named_parameters()), "D's overflowing step was applied"
    assert any(not torch.equal(v, g0[k]) for k, v in tr.G.net.named_parameters()), "G's step was skipped too"
    assert scalers["D"].get_scale() == 512.0 and scalers["G"].get_scale() == 1024.0
    assert gan.skipped.tolist() == [1.0, 0.0]
    # the next clean D step goes through, and D's scale is updated once for it
    gan.d_step([tr.real_batch(1, 0)], [tr.noise(tr.micro)])
    assert any(not torch.equal(v, d0[k]) for k, v in tr.D.net.named_parameters())
    assert scalers["D"].get_scale() == 512.0


def test_fp16_on_cpu_is_refused():
    from distgan.config import ConfigError
    from distgan.runtime import resolve_precision

    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == "no"


def test_launcher_mixed_precision_is_refused(monkeypatch):
    from distgan.config import ConfigError
    from distgan.runtime import build_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="distgan owns precision"):
        build_accelerator(load(None, [], env={}))


def test_bf16_autocast_step_runs_on_cpu(tmp_path, data_dir):
    tr = make(tmp_path, "bf", data_dir, ["runtime.precision=bf16"])
    assert tr.precision == "bf16"
    d, g = tr.train_step(0)
    assert torch.isfinite(d).all() and torch.isfinite(g).all()
    assert all(p.dtype == torch.float32 for p in tr.G.net.parameters())  # autocast keeps fp32 master weights
