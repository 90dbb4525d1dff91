"""Real multi-process runs (accelerate launch, CPU ranks on gloo) and what only they can show. The runs
that finish are launched in groups, one process group per world size (tests/integration/conftest.py);
those that exit on purpose launch alone here."""

from pathlib import Path

import pytest
import torch

from tests.helpers import deviation, free_port, run, worker_cmd
from tests.integration.conftest import BASE, EQUIV, STEPS

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def launch(nproc, tmp, overrides=(), probe=(), config="configs/debug.yaml", check=True):
    """The worker (distgan.train.main with probes) on ``nproc`` ranks; returns every rank's record (saved
    after the last step, before the final checkpoint) and the process."""
    out = tmp / "out"
    cmd = worker_cmd(nproc, out, tmp / "run", [*BASE, *overrides], probe, config)
    p = run(cmd, check=check)
    files = [out / f"rank{r}.pt" for r in range(nproc)]
    return [torch.load(f, weights_only=True) for f in files] if all(f.exists() for f in files) else None, p


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def two_rank(ranks_2):
    """The debug config's paper MLP on 2 ranks, 6 steps of k = 2 D updates."""
    return ranks_2.dir("two_rank"), ranks_2.records("two_rank"), ranks_2


def test_really_two_ranks_on_gloo(two_rank):
    _, ranks, proc = two_rank
    assert [r["world"] for r in ranks] == [2, 2]
    assert "world size 2 | backend gloo" in proc.stdout


def test_replicas_bitwise_identical_and_the_ema_moves(two_rank):
    _, (r0, r1), _ = two_rank
    for net in ("G", "D", "G_ema"):
        assert_same(r0[net], r1[net])
    init, ema, g = r0["init"]["G"], r0["G_ema"], r0["G"]
    params = [k for k in init if k.endswith(("weight", "bias"))]
    # the EMA left the initial weights, and lags behind G (an EMA that copied G, or never updated, fails)
    assert all(not torch.equal(ema[k], init[k]) for k in params), "an EMA tensor never moved"
    assert all(not torch.equal(ema[k], g[k]) for k in params), "the EMA equals G: no averaging"
    # and it lies between: closer to G than the initial weights are
    for k in params:
        assert (ema[k] - g[k]).norm() < (init[k] - g[k]).norm(), k


def test_shards_disjoint_and_cover_epoch(two_rank):
    _, (r0, r1), _ = two_rank
    e0, e1 = set(r0["epoch0"].tolist()), set(r1["epoch0"].tolist())
    assert not e0 & e1
    assert e0 | e1 == set(range(50_000))  # 50,000 / 40 leaves no remainder
    c0, c1 = torch.cat(r0["consumed"]), torch.cat(r1["consumed"])
    assert len(c0) == len(c1) == 6 * 2 * 20 and not set(c0.tolist()) & set(c1.tolist())


def test_noise_differs_between_ranks(two_rank):
    _, (r0, r1), _ = two_rank
    assert len(r0["noises"]) == 6 * 3
    for a, b in zip(r0["noises"], r1["noises"]):
        assert not torch.equal(a, b)


def test_logged_metrics_are_the_mean_over_ranks(two_rank):
    _, (r0, r1), _ = two_rank
    mean = (r0["local_stats"] + r1["local_stats"]) / 2
    assert not torch.equal(r0["local_stats"], r1["local_stats"])
    logged = r0["logged"]
    got = torch.tensor([logged["loss/D"], logged["D(x)"], logged["D(G(z))"], logged["loss/G"]])
    # float32 both ways: a/2 + b/2 all-reduced against (a + b)/2, each within 2 roundings (2 u = 1.2e-7) of the
    # exact mean; 1e-6 (relative, and absolute for values near 0) leaves 8x
    torch.testing.assert_close(got, mean, rtol=1e-6, atol=1e-6)


def test_resume_two_ranks_to_one_and_back(two_rank, tmp_path):
    import shutil

    d, (r0, _), _ = two_rank
    shutil.copytree(d / "run", tmp_path / "run")
    (one,), p = launch(1, tmp_path, ["train.max_steps=8", "train.ckpt_every=8", "train.d_steps=2", "train.resume=auto"])
    assert one["start_step"] == 6 and one["step"] == 8 and one["world"] == 1
    assert "resumed from" in p.stdout and "at step 6" in p.stdout
    assert_same(one["init"]["G"], r0["G"])  # it started from the 2-rank run's weights
    (a, b), p = launch(
        2, tmp_path, ["train.max_steps=10", "train.ckpt_every=10", "train.d_steps=2", "train.resume=auto"]
    )
    assert a["start_step"] == b["start_step"] == 8 and a["step"] == 10 and a["world"] == 2
    assert_same(a["init"]["G"], one["G"])
    assert_same(a["G"], b["G"])


# ------------------------------------------------------------------------------------ equivalences
# EQUIV (conftest.py): the set-up every equivalence run shares.
# The exact comparisons use the state after both steps; the rounding-bounded ones compare one update (the
# state after step 1: one D update, then one G update), so no difference is carried into another update.
#
# Rounding bound for two float32 evaluations of the same gradient that sum in another order (batch 20 in
# one matmul against two accumulated micro-batches of 10). A sum of n terms computed in two orders differs
# by at most 2 (n - 1) u sum|terms|, u = 2**-24 (Higham, Accuracy and Stability, eq. 4.4). A gradient
# element here nests such sums at most L = 8 deep (G's gradient passes D's 4 layers, then G's 3), each of
# at most N = 8192 terms (the widest: a conv weight gradient sums over batch x 14 x 14 positions, 7,840 at
# batch 40). The one assumption: a term of a tensor's update is no larger than m, the largest element of
# that update (true when the per-image contributions do not cancel by orders of magnitude; the measured
# ratios below hold it with 30x room or more). So |delta update| <= 2 L N u m, plus the rounding of
# p - lr g in each run, u |p| each: 2 u |p|. 2 L N u = 7.8e-3 of the largest update; measured here (one
# update): 0.034 of that bound for D, below 1e-4 for G. A wrong reduction moves elements by a good fraction
# of m: the negative controls measure 18 to 170 times the bound (the uneven split's, where the wrong
# weights are off by 1/13 only, 23 for G and 3 for D).
# (tests.helpers.deviation computes it: ROUNDING = 2 L N u with L = 8, N = 8192.)


@pytest.fixture(scope="module")
def reference(ranks_1):
    """1 rank, grad_accum 2, micro-batch 20: the same sums, in the same order, as 2 ranks x 20."""
    return ranks_1.records("reference")[0]


@pytest.fixture(scope="module")
def two_ranks(ranks_2):
    """2 ranks x micro-batch 20 under DDP."""
    return ranks_2.records("two_ranks")


def test_two_ranks_equal_one_rank_with_accumulation_bitwise(reference, two_ranks):
    """The same per-micro-batch kernels and one pairwise sum of halves (a + b == b + a): exact maths, so
    the comparison is exact."""
    r0, r1 = two_ranks
    for net in ("G", "D"):
        assert_same(r0[net], r1[net])
        assert_same(r0[net], reference[net])


@pytest.mark.parametrize("wrong", ["sum", "local", "same-slice"])
def test_two_ranks_negative_controls_fail_the_comparison(reference, ranks_2, tmp_path, wrong):
    """A deliberately wrong reduction must fail the exact comparison above, and by more than 10x the rounding
    bound of the tolerance-based comparison below."""
    if wrong == "local":  # without an all-reduce the replicas drift apart: the checkpoint's replica check stops it
        (r0, r1), p = launch(2, tmp_path, [*EQUIV, *STEPS], ["--inject-noise", "--comm-hook", "local"], check=False)
        assert p.returncode == 1 and "replicas diverged at step 2" in p.stderr, p.stderr[-2000:]
        assert any(not torch.equal(r0["D"][k], r1["D"][k]) for k in r0["D"])
    else:
        r0, _ = ranks_2.records({"sum": "neg_sum", "same-slice": "neg_same_slice"}[wrong])
    assert any(not torch.equal(r0["D"][k], reference["D"][k]) for k in reference["D"])
    assert deviation(r0["first"]["D"], reference["first"]["D"], reference["init"]["D"]) > 10


def test_uneven_split_over_three_ranks_equals_one_rank(reference, ranks_3):
    """A global batch of 40 on 3 ranks is 14 + 13 + 13 images; the loss weights n_r W / B make DDP's average
    the mean over the 40 images, so the updates equal the 1-rank ones within the rounding bound (measured: 0.03
    of it)."""
    ranks = ranks_3.records("uneven")
    assert "global batch 40 = 3 ranks x 13-14 images" in ranks_3.stdout
    for net in ("G", "D"):
        assert_same(ranks[0][net], ranks[2][net])
        dev = deviation(ranks[0]["first"][net], reference["first"][net], reference["init"][net])
        assert dev <= 1.0, f"{net}: {dev:.3g} x the rounding bound"
    consumed = [torch.cat(r["consumed"]) for r in ranks]
    assert [len(c) for c in consumed] == [2 * 14, 2 * 13, 2 * 13]
    assert set(torch.cat(consumed).tolist()) == set(torch.cat(reference["consumed"]).tolist())


def test_uneven_split_negative_control(reference, ranks_3):
    """Every rank weighted alike (DDP's plain average of 14-, 13- and 13-image means) must fail the comparison."""
    ranks = ranks_3.records("neg_uneven")
    dev = max(deviation(ranks[0]["first"][n], reference["first"][n], reference["init"][n]) for n in ("G", "D"))
    assert dev > 10, f"{dev:.3g} x the rounding bound"


@pytest.fixture(scope="module")
def two_ranks_accumulating(ranks_2):
    """2 ranks x grad_accum 2 x micro-batch 10 (the same global batch of 40): no_sync on the first micro-step."""
    return ranks_2.records("accumulating")


def test_grad_accumulation_under_ddp_equals_full_batch(two_ranks_accumulating, two_ranks):
    a0, a1 = two_ranks_accumulating
    for net in ("G", "D"):
        assert_same(a0[net], a1[net])
        dev = deviation(a0["first"][net], two_ranks[0]["first"][net], two_ranks[0]["init"][net])
        assert dev <= 1.0, f"{net}: {dev:.3g} x the rounding bound"
    # no_sync: one all-reduce per bucket and update, as without accumulation (not one per micro-step)
    assert a0["allreduce_calls"] == two_ranks[0]["allreduce_calls"] > 0


def test_grad_accumulation_negative_control(two_ranks, ranks_2):
    a0, _ = ranks_2.records("neg_accumulating")
    assert deviation(a0["first"]["D"], two_ranks[0]["first"]["D"], two_ranks[0]["init"]["D"]) > 10


def test_compiled_under_ddp_equals_eager(two_ranks, ranks_2):
    """torch.compile of G and D (before DDP wrapping) on 2 ranks: replicas identical, the same updates as the
    eager 2-rank run within the rounding bound (inductor fuses and reorders float operations), and the
    compiler's own counters show it compiled, once: no recompile after the first step."""
    c0, c1 = ranks_2.records("compiled")
    for net in ("G", "D"):
        assert_same(c0[net], c1[net])
        dev = deviation(c0["first"][net], two_ranks[0]["first"][net], two_ranks[0]["init"][net])
        assert dev <= 1.0, f"{net}: {dev:.3g} x the rounding bound"
    first, last = c0["graphs"][0], c0["graphs"][-1]
    assert first["frames_ok"] > 0 and first["aot_ok"] > 0 and first["unique_graphs"] >= 4, first
    assert last == first, (first, last)


# ------------------------------------------------------------------------------------ other guarantees
def test_world_size_must_match_what_was_asked(tmp_path):
    _, p = launch(1, tmp_path, ["runtime.expected_world_size=2"], check=False)
    assert p.returncode == 2 and "expected_world_size=2 but the process group has 1" in p.stderr


def test_conv_gan_with_batchnorm_stays_in_sync(ranks_2):
    """DCGAN (BatchNorm in G) on 2 CPU ranks: parameters and BN statistics identical at the checkpoint.
    (SyncBatchNorm, model.sync_batchnorm=true, is GPU-only in torch; here the statistics are rank 0's.)"""
    r0, r1 = ranks_2.records("batchnorm")
    for net in ("G", "D", "G_ema"):
        assert_same(r0[net], r1[net])
    assert any("running_mean" in k for k in r0["G"])


def test_replica_mismatch_stops_the_run_naming_the_tensor(tmp_path):
    """One rank's weight changed on purpose: the next replica check stops the run (exit 1) and names it."""
    _, p = launch(
        2,
        tmp_path,
        ["train.max_steps=8", "train.consistency_every=2", "train.ckpt_every=100"],
        ["--perturb", "1:3"],
        check=False,
    )
    assert p.returncode == 1, p.stderr[-3000:]
    assert "replicas diverged at step 4: tensor 'D.h0.linear.weight' differs between rank 0 and rank(s) [1]" in p.stderr
    import json

    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"


def _agree(rank: int, port: int, out: str, fail_on: int):
    """One rank of a 2-rank gloo group calling runtime.on_every_rank; writes what it got."""
    import datetime

    import torch.distributed as dist

    from distgan.errors import CheckpointError
    from distgan.runtime import on_every_rank

    dist.init_process_group(
        "gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )

    def load():
        if rank == fail_on:
            raise OSError("read error on this rank's file system")
        return 7

    try:
        got = f"returned {on_every_rank(load, 2, CheckpointError)}"
    except Exception as e:  # noqa: BLE001 - what each rank raised is the result
        got = f"{type(e).__name__}: {e}"
    Path(out, str(rank)).write_text(got)
    dist.destroy_process_group()


@pytest.mark.parametrize("fail_on", [None, 1])
def test_a_resume_read_error_on_one_rank_stops_every_rank(tmp_path, fail_on):
    """Every rank loads the resume checkpoint; one that cannot makes all raise (none waits at the next
    collective for a rank that is gone). Real gloo processes."""
    import torch.multiprocessing as mp

    mp.spawn(_agree, args=(free_port(), str(tmp_path), fail_on), nprocs=2, join=True)
    got = [(tmp_path / str(r)).read_text() for r in (0, 1)]
    if fail_on is None:
        assert got == ["returned 7", "returned 7"]
    else:
        assert got[1] == "OSError: read error on this rank's file system"
        assert got[0] == "CheckpointError: rank 1 failed: OSError: read error on this rank's file system"
