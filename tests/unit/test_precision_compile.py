"""Compiled vs eager step by step, and fp16's two loss scalers (scaler logic exercised on the CPU)."""

import pytest
import torch

from distgan.config import load
from distgan.trainer import Trainer
from tests.helpers import deviation

SMALL = ["model.width=32", "train.batch_size=16", "train.progress=false", "wandb.mode=disabled", "ema.enabled=false"]


def make(tmp_path, name, data_dir, extra=()):
    cfg = load(None, [*SMALL, *extra], env={"DISTGAN_DATA_DIR": data_dir})
    return Trainer(cfg, tmp_path / name)


def params(tr):
    return {f"G.{k}": v for k, v in tr.G.module.named_parameters()} | {
        f"D.{k}": v for k, v in tr.D.module.named_parameters()
    }


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compiled_equals_eager_after_every_step(tmp_path, data_dir):
    """Inductor fuses and reorders float operations, so compiled and eager agree within the rounding bound of
    plain SGD (tests.helpers.deviation; Adam would magnify rounding on tiny-variance weights and hide a wrong
    scale), checked after every step.

    The bound for S steps: each update is one evaluation of the gradient in another summation order, within
    2 L N u m_s of eager's (m_s: the tensor's largest element of update s; the derivation is beside the
    equivalence tests in tests/integration/test_distributed.py), plus 2 u |p| for p - lr g. The S roundings
    add: |compiled - eager| <= 2 L N u (m_1 + ... + m_S) + 2 u |p|. A difference carried into a later gradient
    changes that update by lr x curvature x difference, second order in u (dropped). Measured here: at most
    0.2 of the bound over these 4 steps.

    Negative controls, from the same runs: the compiled parameters with this step's update dropped (the
    state before it) or applied twice must fail the same check, by 10x the bound or more (measured: 38x to 128x;
    the margin shrinks as the bound grows with the steps, 1/S of a step each)."""
    # fallback_random: inductor draws dropout masks from the same generator as eager.
    sgd = ["optim.name=sgd", "optim.lr=0.1", "optim.momentum=0", "optim.final_momentum=0"]
    eager = make(tmp_path, "eager", data_dir, ["compile.fallback_random=true", *sgd])
    comp = make(tmp_path, "comp", data_dir, ["compile.enabled=true", "compile.fallback_random=true", *sgd])
    for a, b in zip(params(eager).values(), params(comp).values()):
        assert torch.equal(a, b)
    init = {k: v.detach().clone() for k, v in params(eager).items()}
    prev, prev_e = dict(init), dict(init)
    moved = {k: 0.0 for k in init}  # per tensor: the sum over steps of eager's largest update element
    from torch._dynamo.utils import counters

    counters.clear()
    graphs = []
    for step in range(4):  # D and G phases alternate: requires_grad flips on D every step
        eager.train_step(step)
        comp.train_step(step)
        graphs.append(counters["stats"]["unique_graphs"])
        pe = {k: v.detach().clone() for k, v in params(eager).items()}
        pc = {k: v.detach().clone() for k, v in params(comp).items()}
        for k in pe:
            moved[k] += (pe[k] - prev_e[k]).abs().max().item()
        dev = deviation(pc, pe, init, moved)
        assert dev <= 1.0, f"step {step}: {dev:.3g} x the rounding bound"
        for k in pe:
            assert not torch.equal(pc[k], prev[k]), f"step {step}: compiled {k} got no update"
        dropped = deviation(prev, pe, init, moved)
        doubled = deviation({k: 2 * pc[k] - prev[k] for k in pc}, pe, init, moved)
        assert dropped > 10 and doubled > 10, f"step {step}: dropped {dropped:.3g}, doubled {doubled:.3g} x the bound"
        prev, prev_e = pc, pe
    # The compiler really ran (a silent fallback to eager would compare eager with eager): dynamo captured
    # graphs and AOTAutograd compiled them; and after the first step nothing recompiles (one static graph
    # per network and phase: D at 2B in its phase and B in G's, G with and without grad).
    assert counters["frames"]["ok"] > 0 and counters["aot_autograd"]["ok"] > 0, dict(counters)
    assert graphs[0] >= 4 and graphs == [graphs[0]] * 4, graphs


FP16 = ["runtime.precision=fp16", "runtime.allow_cpu_fp16=true", "model.width=8"]


def snap(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, module):
    return all(torch.equal(v, module.state_dict()[k]) for k, v in a.items())


def test_fp16_overflow_in_d_skips_only_d_and_is_not_divergence(tmp_path, data_dir):
    """Two scalers: D's scale made too large overflows D's scaled gradients (its loss stays finite): D's
    update is skipped and counted as calibration (overflow), its scale halves; G steps, its scale unchanged."""
    tr = make(tmp_path, "s", data_dir, FP16)
    assert tr.precision == "fp16" and tr.G.scaler is not tr.D.scaler
    tr.train_step(0)  # the scalers' scales exist from their first use on
    tr.D.scaler.update(new_scale=2.0**120)  # fp16 gradients times 2**120: inf
    g_scale = tr.G.scaler.get_scale()
    d0, g0 = snap(tr.D.module), snap(tr.G.module)
    n = tr.micro_sizes[0]
    tr.gan.d_step([tr.real_batch(0, 0)], [tr.noise(n)])
    tr.gan.g_step([tr.noise(n)])
    assert same(d0, tr.D.module), "D's overflowing step was applied"
    assert not same(g0, tr.G.module), "G's step was skipped too"
    assert tr.D.scaler.get_scale() == 2.0**119 and tr.G.scaler.get_scale() == g_scale
    assert tr.gan.guard.overflow.tolist() == [1.0, 0.0] and tr.gan.guard.skipped.tolist() == [0.0, 0.0]
    assert tr.check_guard()["amp/overflow/D"] == 1.0  # reported, and no Diverged even under nonfinite=stop
    tr.cfg.train.nonfinite = "stop"
    tr.check_guard()


def test_fp16_nan_loss_is_divergence_not_overflow(tmp_path, data_dir):
    """A NaN in the data makes the loss non-finite at any scale: the guard's business, not the scaler's."""
    tr = make(tmp_path, "n", data_dir, [*FP16, "train.nonfinite=stop"])
    x = tr.real_batch(0, 0).clone()
    x[0, 0, 0, 0] = float("nan")
    d0 = snap(tr.D.module)
    tr.gan.d_step([x], [tr.noise(tr.micro_sizes[0])])
    assert same(d0, tr.D.module)
    assert tr.gan.guard.skipped.tolist() == [1.0, 0.0] and tr.gan.guard.overflow.tolist() == [0.0, 0.0]
    from distgan.errors import Diverged

    with pytest.raises(Diverged, match="train.nonfinite=stop"):
        tr.check_guard()


def test_fp16_with_r1_steps_on(tmp_path, data_dir):
    """fp16 + lazy R1 with fused Adam: the R1 update runs unscaled, and the next fp16 D step still works
    (it used to leave opt.grad_scale = None behind: the GradScaler then computed scale * None)."""
    tr = make(
        tmp_path,
        "r1",
        data_dir,
        [
            *FP16,
            "model.generator=dcgan28",
            "model.discriminator=dcgan28",
            "model.noise=normal",
            "loss.r1_gamma=1",
            "loss.r1_every=1",
        ],
    )
    assert tr.D.opt.defaults.get("fused")
    for step in range(3):  # D, R1, G each step
        d0 = snap(tr.D.module)
        d, g = tr.train_step(step)
        assert torch.isfinite(d).all() and torch.isfinite(g).all() and torch.isfinite(tr.r1_last).all()
        assert not same(d0, tr.D.module)
    assert not hasattr(tr.D.opt, "grad_scale") and not hasattr(tr.D.opt, "found_inf")


def test_fp16_scaler_calibration_never_trips_the_guard_and_resumes_with_its_scale(tmp_path, data_dir):
    """Scales starting at 2**40 overflow for ~25 steps in both networks while they calibrate; with
    train.nonfinite=stop and a skip streak of 3 the run must still finish (the old guard counted these
    as divergence). The checkpoint keeps both scales; a resume restores them."""
    run = [
        "train.max_steps=40",
        "train.log_every=10",
        "train.ckpt_every=40",
        "train.nonfinite=stop",
        "train.max_skip_streak=3",
        "runtime.fp16_init_scale=1099511627776",
    ]
    tr = make(tmp_path, "cal", data_dir, [*FP16, *run])
    logged = tr.train()
    assert logged["skipped/D"] == 0 and logged["amp/overflow/D"] >= 20 and logged["amp/overflow/G"] >= 20
    assert logged["amp/scale/D"] <= 2.0**20  # 20 or more halvings from 2**40
    saved = torch.load(tr.ckpt_root / "step-000000040" / "state.pt", weights_only=True)
    again = make(tmp_path, "cal", data_dir, [*FP16, *run, "train.resume=auto", "train.max_steps=41"])
    assert again.step == 40
    for net, key in ((again.D, "scaler_D"), (again.G, "scaler_G")):
        assert net.scaler.get_scale() == saved[key]["scale"] == logged[f"amp/scale/{net.name}"]


def test_fused_sgd_after_a_skipped_first_step_starts_from_zero_momentum():
    """torch's fused SGD allocates momentum buffers with empty_like on its first step; a skipped first step
    used to leave garbage there. distgan starts them at zero: the first real step is torch's first step."""
    from distgan.config import load
    from distgan.torch_private import fused_step_unless
    from distgan.trainer import build_optimizer

    cfg = load(None, ["optim.name=sgd", "optim.momentum=0.5"], env={})
    torch.manual_seed(0)
    a, b = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer(cfg, a.parameters(), 0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.5, fused=True)  # torch alone, no skip
    assert opt_a.defaults["fused"]
    for p in a.parameters():
        p.grad = torch.full_like(p, float("nan"))
    fused_step_unless(opt_a, torch.ones(()))  # skipped in the kernel
    assert all(torch.equal(opt_a.state[p]["momentum_buffer"], torch.zeros_like(p)) for p in a.parameters())
    g = [torch.randn_like(p) for p in a.parameters()]
    for p, q, gi in zip(a.parameters(), b.parameters(), g):
        p.grad, q.grad = gi.clone(), gi.clone()
    opt_a.step()
    opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt_a.state[p]["momentum_buffer"], opt_b.state[q]["momentum_buffer"])


def test_fp16_on_cpu_is_refused_without_the_test_switch():
    from distgan.config import ConfigError
    from distgan.runtime import resolve_precision

    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("fp16", torch.device("cpu"), allow_cpu_fp16=True)[0] == "fp16"
    assert resolve_precision("auto", torch.device("cpu")) == ("no", "auto: no GPU, fp32")


def test_auto_precision_ignores_emulated_bf16(monkeypatch):
    """A V100 or T4 'supports' bf16 only by emulation (slower than fp32): auto must not pick it. The GPU
    cannot exist here; torch's two answers for such a device are stood in."""
    from distgan.runtime import resolve_precision

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    prec, why = resolve_precision("auto", torch.device("cuda", 0))
    assert prec == "no" and "V100" in why and "no native bf16" in why
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", torch.device("cuda", 0))[0] == "bf16"


def test_launcher_mixed_precision_is_refused(monkeypatch):
    from distgan.config import ConfigError
    from distgan.runtime import build_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="distgan owns precision"):
        build_accelerator(load(None, [], env={}))


LAYERS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)


def layer_output_dtypes(tr, step: int = 0):
    """{layer name: set of output dtypes} of every Linear and convolution of G and D over one real step
    (forward hooks: every call in both phases), and the step's stats."""
    seen: dict = {}
    hooks = []
    for net, module in (("G", tr.G.module), ("D", tr.D.module)):
        for name, m in module.named_modules():
            if isinstance(m, LAYERS):
                key = f"{net}.{name}"
                seen[key] = set()
                hooks.append(m.register_forward_hook(lambda m, i, o, key=key: seen[key].add(o.dtype)))
    try:
        d, g = tr.train_step(step)
    finally:
        for h in hooks:
            h.remove()
    return seen, d, g


@pytest.mark.parametrize("nets", ["paper_mlp", "dcgan28"])
def test_bf16_autocast_runs_every_matmul_and_conv_in_bf16(tmp_path, data_dir, nets):
    """runtime.precision=bf16: every Linear and convolution of G and D outputs bfloat16 inside a real step
    (an autocast that silently ran fp32 would output float32), while the weights stay fp32 masters. The
    negative control: the same step at precision=no records float32 in the same hooks."""
    arch = (
        [] if nets == "paper_mlp" else ["model.generator=dcgan28", "model.discriminator=dcgan28", "model.noise=normal"]
    )
    for precision, want in (("bf16", torch.bfloat16), ("no", torch.float32)):
        tr = make(tmp_path, f"{nets}-{precision}", data_dir, [f"runtime.precision={precision}", *arch, "model.width=8"])
        assert tr.precision == precision
        seen, d, g = layer_output_dtypes(tr)
        assert len(seen) >= 4 and all(seen.values()), f"layers that never ran: {[k for k, v in seen.items() if not v]}"
        assert all(v == {want} for v in seen.values()), {k: v for k, v in seen.items() if v != {want}}
        assert torch.isfinite(d).all() and torch.isfinite(g).all()
        assert all(p.dtype == torch.float32 for p in [*tr.G.module.parameters(), *tr.D.module.parameters()])
