"""WebDataset shards: the writer, exact and resampled streams, bad data, remote URLs, training from shards."""

import io
import json
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from distgan.data.mnist import DataError
from distgan.data.stream import ShardStream, check_urls, expand_urls, read_all
from tests.helpers import call, module

pytestmark = pytest.mark.timeout(300)


def run(args, check=True, env=None, timeout=240, nproc=1):
    """make_shards and 1-process training in this process (tests/helpers.call); 2 ranks in subprocesses."""
    if nproc == 1:
        return call(*args, check=check, env=env)
    return module(*args, check=check, env=env, timeout=timeout, nproc=nproc)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """23 random 32x32 RGB images in two class folders (already at the target size: no resampling)."""
    root = tmp_path_factory.mktemp("imgs")
    g = np.random.default_rng(0)
    images, labels = [], []
    for i in range(23):
        cls = "cats" if i % 3 else "dogs"
        (root / cls).mkdir(exist_ok=True)
        arr = g.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / cls / f"{i:03d}.png")
    paths = sorted(root.rglob("*.png"))
    perm = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))  # the writer's order (--seed 0)
    for p in [paths[i] for i in perm]:
        images.append(np.asarray(Image.open(p)).transpose(2, 0, 1))
        labels.append({"cats": 0, "dogs": 1}[p.parent.name])
    return root, torch.from_numpy(np.stack(images)), torch.tensor(labels)


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    root, _, _ = folder
    out = tmp_path_factory.mktemp("shards")
    p = run(
        [
            "distgan.data.make_shards",
            "--from",
            str(root),
            "--out",
            str(out),
            "--size",
            "32",
            "--shard-size",
            "3",
            "--no-progress",
        ]
    )
    return out, p


def test_shards_read_back_identically(folder, shards):
    _, images, labels = folder
    out, proc = shards
    assert "wrote 23 samples in 8 shards" in proc.stdout
    meta = json.loads((out / "train-meta.json").read_text())
    assert meta["samples"] == 23 and meta["shards"] == 8 and meta["image_shape"] == [3, 32, 32] and meta["classes"] == 2
    urls = expand_urls(str(out / "train-{000000..000007}.tar"))
    x, y, skipped = read_all(urls, (3, 32, 32))
    assert skipped == 0 and x.shape == (23, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x, images) and torch.equal(y, labels)
    again = run(
        ["distgan.data.make_shards", "--from", str(folder[0]), "--out", str(out), "--size", "32", "--no-progress"],
        check=False,
    )
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert len(list(out.glob("train-*.tar"))) == 8, "a refused write must leave the shards alone"


def test_exact_mode_ranks_and_workers_read_disjoint_shards(folder, shards):
    _, images, _ = folder
    out, _ = shards
    urls = expand_urls(str(out / "train-{000000..000007}.tar"))
    parts = [read_all(urls, (3, 32, 32), batch_size=2, rank=r, world=2, workers=2)[0] for r in range(2)]
    keys = [{x.numpy().tobytes() for x in part} for part in parts]
    assert not keys[0] & keys[1], "two ranks read the same sample"
    assert len(keys[0]) + len(keys[1]) == 23 and keys[0] | keys[1] == {x.numpy().tobytes() for x in images}
    with pytest.raises(DataError, match="at least one shard per reader"):
        ShardStream(urls[:3], "exact", 2, (3, 32, 32), rank=0, world=2, num_workers=2)


def test_resampled_mode_gives_every_rank_the_same_batch_count(shards):
    out, _ = shards
    urls = expand_urls(str(out / "train-000000.tar"))  # one shard, 2 ranks x 2 workers: exact mode would starve
    counts = []
    for rank in range(2):
        ds = ShardStream(
            urls,
            "resampled",
            4,
            (3, 32, 32),
            rank=rank,
            world=2,
            seed=0,
            shuffle_buffer=10,
            epoch_batches=5,
            num_workers=2,
        )
        counts.append(sum(1 for _ in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)))
    assert counts == [6, 6]  # ceil(5 / 2 workers) batches per worker


def test_pipe_url_reads_like_a_local_path(shards):
    out, _ = shards
    local = read_all([str(out / "train-000001.tar")], (3, 32, 32))[0]
    piped = read_all([f"pipe:cat {out / 'train-000001.tar'}"], (3, 32, 32))[0]
    assert local.shape[0] == 3 and torch.equal(local, piped)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_corrupt_and_truncated_samples_are_skipped_and_counted(tmp_path):
    import webdataset as wds

    good = np.full((32, 32, 3), 7, np.uint8)
    path = tmp_path / "train-000000.tar"
    with wds.TarWriter(str(path)) as w:
        w.write({"__key__": "a", "png": _png(good), "cls": b"1"})
        w.write({"__key__": "broken", "png": b"\x89PNG not really", "cls": b"2"})
        w.write({"__key__": "c", "png": _png(good), "cls": b"3"})
    with pytest.warns(UserWarning, match=r"train-000000\.tar key broken"):
        x, y, skipped = read_all([str(path)], (3, 32, 32))
    assert x.shape[0] == 2 and y.tolist() == [1, 3] and skipped == 1
    # the same shard cut in the middle of its last member: what precedes it is read, the damage counted
    data = path.read_bytes()
    with tarfile.open(path) as t:
        last = t.getmembers()[-1]
    cut = tmp_path / "train-000001.tar"
    cut.write_bytes(data[: last.offset_data + 10])
    with pytest.warns(UserWarning, match="skipping"):
        x, _, skipped = read_all([str(cut)], (3, 32, 32))
    assert x.shape[0] == 1 and skipped >= 2  # "a" read; "broken" and the cut "c" skipped


def test_missing_shard_or_empty_pattern_fails_at_start(tmp_path):
    with pytest.raises(DataError, match="train-000003.tar"):
        check_urls([str(tmp_path / "train-000003.tar")])
    with pytest.raises(DataError, match="data.urls is empty"):
        expand_urls("  ")
    p = run(
        [
            "distgan.train",
            "--config",
            "configs/webdataset_64.yaml",
            "--run-dir",
            str(tmp_path / "r"),
            f"data.urls={tmp_path}/train-{{000000..000003}}.tar",
        ],
        check=False,
    )
    assert p.returncode == 2 and "train-000000.tar" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()


TINY_64 = [
    "train.progress=false",
    "model.width=8",
    "model.z_dim=16",
    "train.batch_size=8",
    "train.max_steps=4",
    "train.ckpt_every=2",
    "train.log_every=2",
    "train.sample_every=2",
    "data.workers=1",
    "data.shuffle_buffer=8",
    "wandb.mode=disabled",
]


def test_short_64px_training_from_shards(folder, tmp_path):
    shards = tmp_path / "s64"
    run(
        [
            "distgan.data.make_shards",
            "--from",
            str(folder[0]),
            "--out",
            str(shards),
            "--size",
            "64",
            "--shard-size",
            "8",
            "--format",
            "jpg",
            "--no-progress",
        ]
    )
    run_dir = tmp_path / "run"
    run(
        [
            "distgan.train",
            "--config",
            "configs/webdataset_64.yaml",
            "--run-dir",
            str(run_dir),
            f"data.urls={shards}/train-{{000000..000002}}.tar",
            "model.d_spectral_norm=true",
            "loss.name=hinge",
            "loss.r1_gamma=1",
            "loss.r1_every=2",
            *TINY_64,
        ]
    )
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000000004"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data/skipped"] == 0 and "loss/R1" in rows[-1] and np.isfinite(rows[-1]["loss/R1"])
    out = tmp_path / "s.npz"
    run(["distgan.sample", "--checkpoint", str(run_dir), "--num", "5", "--out", str(out)])
    assert np.load(out)["images"].shape == (5, 3, 64, 64)


@pytest.mark.slow
def test_two_ranks_train_from_fewer_shards_than_readers(folder, tmp_path):
    shards = tmp_path / "s32"
    run(
        [
            "distgan.data.make_shards",
            "--from",
            str(folder[0]),
            "--out",
            str(shards),
            "--size",
            "32",
            "--shard-size",
            "50",
            "--no-progress",
        ]
    )
    p = run(
        [
            "distgan.train",
            "--config",
            "configs/webdataset_64.yaml",
            "--run-dir",
            str(tmp_path / "run"),
            f"data.urls={shards}/train-000000.tar",
            "data.image_size=32",
            "runtime.pg_timeout_s=60",
            "train.consistency_every=2",
            *TINY_64,
        ],
        nproc=2,
    )
    assert "world size 2" in p.stdout
    assert (tmp_path / "run" / "checkpoints" / "step-000000004").is_dir()


def test_training_over_a_corrupt_sample_counts_it(tmp_path):
    """A real run (not only read_all) through a shard holding a damaged PNG: it trains, skips the sample
    and logs data/skipped >= 1 in metrics.jsonl."""
    import webdataset as wds

    path = tmp_path / "train-000000.tar"
    g = np.random.default_rng(1)
    with wds.TarWriter(str(path)) as w:
        for i in range(10):
            png = _png(g.integers(0, 256, (32, 32, 3), dtype=np.uint8)) if i != 4 else b"\x89PNG damaged"
            w.write({"__key__": f"{i:03d}", "png": png, "cls": b"0"})
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipping unreadable data .* key 004"):
        run(
            [
                "distgan.train",
                "--config",
                "configs/webdataset_64.yaml",
                "--run-dir",
                str(run_dir),
                f"data.urls={path}",
                "data.image_size=32",
                *TINY_64,
                "data.workers=0",
            ]
        )
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and rows[-1]["data/skipped"] >= 1


def test_shards_of_another_image_size_fail_at_start(folder, shards, tmp_path):
    out, _ = shards  # 32x32 shards
    url = str(out / "train-{000000..000007}.tar")
    p = run(
        [
            "distgan.train",
            "--config",
            "configs/webdataset_64.yaml",
            "--run-dir",
            str(tmp_path / "r"),
            f"data.urls={url}",
            *TINY_64,
        ],
        check=False,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"shard {out / 'train-000000.tar'} holds 32x32 images" in p.stderr and "data.image_size=64" in p.stderr
    assert not (tmp_path / "r").exists()


def test_stacked_mnist_shards_and_mode_metric(tmp_path, data_dir):
    from distgan.metrics.suite import compute, to_28px

    out = tmp_path / "stacked"
    run(
        [
            "distgan.data.make_shards",
            "--from",
            "stacked_mnist",
            "--out",
            str(out),
            "--num",
            "300",
            "--shard-size",
            "100",
            "--no-progress",
        ]
    )
    x, y, _ = read_all(expand_urls(str(out / "train-{000000..000002}.tar")), (3, 28, 28))
    assert x.shape == (300, 3, 28, 28) and int(y.max()) < 1000
    res = compute(x, ("stacked",), data_dir)
    # The true modes are in hand (the .cls labels): the classifier's count can differ from theirs only
    # through the triples it misreads, and each misread triple moves the count by at most one.
    from distgan.metrics.classifier import features_and_probs

    probs = [features_and_probs(x[:, c : c + 1].contiguous())[1] for c in range(3)]
    pred = sum(p.argmax(1) * 10 ** (2 - c) for c, p in enumerate(probs))
    misread = int((pred != y).sum())
    # A property of the classifier, not of this CPU: 900 digits read at its stated test error e (0.7%) give a
    # Binomial(900, e) count of misreads (mean 6.3); the limit is that law's upper tail at 1e-6.
    from distgan.metrics.classifier import classifier_info

    e = 1 - classifier_info()["test_accuracy"]
    tail, limit = 1.0, 0
    while tail >= 1e-6:  # P(X > limit)
        tail -= math.comb(900, limit) * e**limit * (1 - e) ** (900 - limit)
        limit += 1
    assert misread <= limit, (misread, limit)
    assert res["stacked_num"] == 300 and abs(res["stacked_modes"] - len(set(y.tolist()))) <= misread
    # KL(joint || uniform) = the channels' KLs to uniform over 10 + their total correlation, which is >= 0
    assert 0 < res["stacked_channel_kl"] < res["stacked_kl"]
    conf = torch.cat([p.amax(1) for p in probs])
    assert res["stacked_unsure"] == pytest.approx((conf < 0.9).double().mean().item(), abs=1e-12)
    assert res["stacked_unsure"] <= (conf < 0.99).double().mean().item()
    # The same triples (same seed) made at 64 px are read after a resize back to 28 px: the two readings may
    # part only on digits the resampling blurs (4 of 2,700 when measured; the bound is 2% of the 900 digits)
    run(["distgan.data.make_shards", "--from", "stacked_mnist", "--out", str(tmp_path / "s64"), "--num", "300",
         "--shard-size", "300", "--size", "64", "--no-progress"])  # fmt: skip
    x64, y64, _ = read_all(expand_urls(str(tmp_path / "s64" / "train-000000.tar")), (3, 64, 64))
    assert torch.equal(y64, y) and x64.shape == (300, 3, 64, 64)
    probs64 = [features_and_probs(to_28px(x64)[:, c : c + 1].contiguous())[1] for c in range(3)]
    parted = sum(int((p.argmax(1) != q.argmax(1)).sum()) for p, q in zip(probs, probs64))
    assert parted <= 18, parted
    pred64 = sum(p.argmax(1) * 10 ** (2 - c) for c, p in enumerate(probs64))
    res64 = compute(x64, ("stacked",), data_dir)
    assert (
        res64["stacked_modes"] == len(set(pred64.tolist()))
        and abs(res64["stacked_modes"] - res["stacked_modes"]) <= parted
    )
    with pytest.raises(ValueError, match=r"compare with MNIST at 28x28; these samples are \(1, 64, 64\)"):
        compute(x64[:, :1], ("fd",), data_dir)
    one_mode = x[:1].repeat(300, 1, 1, 1)
    res1 = compute(one_mode, ("stacked",), data_dir)
    assert res1["stacked_modes"] == 1 and res1["stacked_kl"] == pytest.approx(np.log(1000), rel=1e-9)
    # one digit per channel: every channel's KL is log 10 and the channels carry no total correlation
    assert res1["stacked_channel_kl"] == pytest.approx(3 * np.log(10), rel=1e-9)
    assert res1["stacked_unsure"] in (0.0, 1.0)


@pytest.mark.slow
def test_sigterm_to_every_process_of_a_streaming_run_exits_75_and_leaves_none(shards, tmp_path):
    """What a scheduler does at a time limit: SIGTERM to every process of the job, the DataLoader worker
    included (which ignores it by design, so a stop cannot kill the data stream under the checkpoint). The run
    stops at a step with a checkpoint and exits 75, and its worker with it: before StreamBatches.close, the
    worker outlived the trainer and the process waited for it forever at interpreter exit."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    from tests.helpers import REPO, child_env, train_cmd

    run_dir = tmp_path / "run"
    urls = f"data.urls={shards[0]}/train-{{000000..000007}}.tar"
    cmd = train_cmd(
        run_dir,
        *TINY_64,
        urls,
        "data.image_size=32",
        "train.max_steps=100000",
        "train.ckpt_every=100000",
        config="configs/webdataset_64.yaml",
    )
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 2, "no DataLoader worker: the test would not test the stop with one"
        os.killpg(proc.pid, signal.SIGTERM)  # every process of the session, as a scheduler signals a job
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, err[-3000:]
    assert "stopped on signal SIGTERM at step" in out
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"left running: {alive}"
