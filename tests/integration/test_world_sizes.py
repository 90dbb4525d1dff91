"""Every shipped config starts and trains on 3 ranks (real gloo groups on this CPU): the global batch is split
unevenly where it must be (64 over 3 ranks: 22 + 21 + 21), with the replica check at every step. The R3GAN
configs, new with their own networks and loss, also on 1 rank (a plain process with both threads, no group).
8 ranks run two configs that cover what a large group changes: MNIST held in memory and split 13/12 (batch 100
over 8) with the in-training evaluation spread over every rank, and shards streamed to more ranks than there
are shards (4 over 8). The split itself does not depend on the config (tests/unit: distgan.data.sampler.split),
and every config's parts run on 3 ranks here (BatchNorm on several ranks also in test_distributed.py)."""

import json
import math

import pytest

from tests.helpers import REPO, call, launch_cmd, run

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
R3GAN = [c for c in CONFIGS if "r3gan" in c]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    call(
        "distgan.data.make_shards",
        "--from",
        "mnist",
        "--out",
        str(d / "m64"),
        "--size",
        "64",
        "--channels",
        "3",
        "--split",
        "test",
        "--shard-size",
        "100",
        "--no-progress",
    )  # 10,000 in 100 shards; 2 are read
    call(
        "distgan.data.make_shards",
        "--from",
        "stacked_mnist",
        "--out",
        str(d / "st"),
        "--num",
        "400",
        "--shard-size",
        "100",
        "--no-progress",
    )
    call(
        "distgan.data.make_shards",
        "--from",
        "stacked_mnist",
        "--out",
        str(d / "s32"),
        "--num",
        "200",
        "--size",
        "32",
        "--shard-size",
        "100",
        "--no-progress",
    )
    return (
        str(d / "m64" / "test-{000000..000001}.tar"),
        str(d / "st" / "train-{000000..000003}.tar"),
        str(d / "s32" / "train-{000000..000001}.tar"),
    )


@pytest.mark.parametrize(
    "world, names",
    [(1, R3GAN), (3, [*CONFIGS, "webdataset_64_in_memory"]), (8, ["debug", "stacked_mnist"])],
    ids=["1-rank", "3-ranks", "8-ranks"],
)
def test_every_config_trains_on_odd_and_large_world_sizes(tmp_path, shards, world, names):
    from distgan.config import load
    from distgan.data.sampler import split

    worker = str(REPO / "tests" / "integration" / "configs_worker.py")
    # one rank alone gets both cores, as a user's one-process run does
    p = run(
        launch_cmd(world, worker, str(tmp_path), *shards, *names),
        env={"OMP_NUM_THREADS": "2"} if world == 1 else None,
        timeout=560,
    )
    # DDP's false alarm on R1/R2's 1x1 convolution gradients (distgan.runtime.wrap_ddp) is not printed
    assert "Grad strides do not match" not in p.stderr + p.stdout
    for name in names:
        res = json.loads((tmp_path / f"{name}.json").read_text())
        batch = load(REPO / "configs" / f"{name.replace('_in_memory', '')}.yaml", env={}).train.batch_size
        assert res["world"] == world and res["step"] == 2, name
        assert res["rank_sizes"] == split(batch, world) and sum(res["rank_sizes"]) == batch, name
        assert max(res["rank_sizes"]) - min(res["rank_sizes"]) <= 1
        assert (
            math.isfinite(res["loss/D"])
            and res["images_seen"]
            == 2 * batch * load(REPO / "configs" / f"{name.replace('_in_memory', '')}.yaml", env={}).train.d_steps
        )
        assert (tmp_path / "runs" / name / "checkpoints" / "step-000000002" / "manifest.json").exists()
        if (
            "ada_target" in (REPO / "configs" / f"{name.replace('_in_memory', '')}.yaml").read_text()
        ):  # p moved (from 0.5) alike on every rank
            assert len(res["ada_p"]) == world and len(set(res["ada_p"])) == 1 and res["ada_p"][0] != 0.5, res
            assert res["aug/p"] == res["ada_p"][0]
