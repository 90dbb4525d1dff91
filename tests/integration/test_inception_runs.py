"""Inception metrics in real runs (random weights of the real architecture, made here): reference
statistics extracted by 2 ranks against 1, and in-training FID on a 32 px shard run choosing `best` on
held-out shards."""

import json

import numpy as np
import pytest
import torch

from distgan.metrics import fidelity, inception
from tests.helpers import call, child_env, module, train_here


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return inception.write_random_weights(tmp_path_factory.mktemp("inception") / inception.WEIGHTS_NAME, seed=0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """16 RGB images at 32 px in 4 shards of 4, in two classes (sub-folders "dark" and "light")."""
    from PIL import Image

    root = tmp_path_factory.mktemp("rgb")
    src = root / "images"
    g = torch.Generator().manual_seed(0)
    for i in range(16):
        cls = ("dark", "light")[i % 2]
        x = torch.randint(0, 128, (3, 8, 8), generator=g, dtype=torch.uint8) + 127 * (i % 2)  # blocky 32 px
        x = x.repeat_interleave(4, 1).repeat_interleave(4, 2)
        (src / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(src / cls / f"{i:03d}.png")
    out = root / "shards"
    call("distgan.data.make_shards", "--from", str(src), "--out", str(out), "--size", "32", "--shard-size", "4",
         "--no-progress")  # fmt: skip
    return str(out / "train-{000000..000003}.tar")


@pytest.mark.slow
def test_two_ranks_make_the_same_reference_as_one(tmp_path, weights, shards):
    """Each rank extracts blocks r, r + W, ... and every rank gathers them once. Tolerance, derived: a sample's
    features depend only on its block and the kernels that compute it; with the same 4 images per block and
    the same intra-op thread count in every process (the children's, set here for the 1-process run too:
    oneDNN's convolutions sum in another order with another thread count), they are the same bits, and the
    statistics are one function of the gathered features in block order: the tolerance is zero. Negative
    control: the statistics without rank 1's share (what a missing gather would give) differ."""
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    common = ["--inception-weights", str(weights), "--block", "4"]
    threads = torch.get_num_threads()
    torch.set_num_threads(int(child_env()["OMP_NUM_THREADS"]))
    try:
        call("distgan.evaluate", "--make-reference", shards, "--out", str(one), *common)
    finally:
        torch.set_num_threads(threads)
    module("distgan.evaluate", "--make-reference", shards, "--out", str(two), *common, nproc=2)
    a, b = fidelity.Reference.load(one), fidelity.Reference.load(two)
    assert a.meta["num"] == b.meta["num"] == 16 and a.meta["content"] == b.meta["content"]
    assert torch.equal(a.features, b.features)
    assert np.array_equal(a.mu, b.mu) and np.array_equal(a.sigma, b.sigma)
    rank0_blocks = torch.cat([a.features[i : i + 4] for i in range(0, 16, 8)])  # blocks 0 and 2
    partial = fidelity.Reference.from_features(rank0_blocks, {})
    assert not np.allclose(partial.mu, a.mu, rtol=1e-3, atol=0)


@pytest.mark.slow
def test_in_training_fid_on_held_out_shards_selects_best(tmp_path, weights, shards):
    """eval.every on a 32 px RGB shard run: FID of the EMA generator against the last shard (held out of
    training), logged as eval/fid at every evaluation; checkpoints/best holds the lowest."""
    run = tmp_path / "run"
    p = train_here(
        run, "data.dataset=webdataset", f"data.urls={shards}", "data.image_size=32", "data.channels=3",
        "data.workers=0", "data.holdout_shards=1", "model.generator=dcgan", "model.discriminator=dcgan",
        "model.width=8", "train.batch_size=4", "train.max_steps=6", "train.ckpt_every=6", "train.log_every=2",
        "eval.every=2", "eval.num=8", "eval.block=4", "eval.metrics=fid,kid", "eval.best_metric=fid",
        f"eval.inception_weights={weights}", "optim.lr=0.01",
    )  # fmt: skip
    assert "Inception reference: 4 held-out images of" in p.stdout and "train-000003.tar" in p.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    fids = {r["step"]: r["eval/fid"] for r in rows if "eval/fid" in r}
    assert sorted(fids) == [2, 4, 6] and all(v > 0 for v in fids.values())
    assert all("eval/kid" in r for r in rows if "eval/fid" in r)
    best_step = min(fids, key=fids.get)
    manifest = json.loads((run / "checkpoints" / "best" / "manifest.json").read_text())
    assert manifest["step"] == best_step and manifest["best"]["value"] == fids[best_step]
    # distgan.evaluate on the run: FID against the run's own held-out shard, found in its config
    out = tmp_path / "fid.json"
    call("distgan.evaluate", "--checkpoint", str(run), "--metrics", "fid", "--num", "8", "--block", "4",
         "--inception-weights", str(weights), "--json", str(out))  # fmt: skip
    res = json.loads(out.read_text())
    assert res["fid"] > 0 and res["reference"].endswith("train-000003.tar") and res["num"] == 8
    # the reference statistics were cached by content: a second start finds them
    p = train_here(
        tmp_path / "again", "data.dataset=webdataset", f"data.urls={shards}", "data.image_size=32",
        "data.channels=3", "data.workers=0", "data.holdout_shards=1", "model.generator=dcgan",
        "model.discriminator=dcgan", "model.width=8", "train.batch_size=4", "train.max_steps=1", "eval.every=1",
        "eval.num=4", "eval.block=4", "eval.metrics=fid", "eval.best_metric=fid", f"eval.inception_weights={weights}",
    )  # fmt: skip
    assert "(cached;" in p.stdout


@pytest.mark.slow
def test_a_classifier_of_labelled_shards_scores_a_32px_run(tmp_path, shards):
    """Without Inception weights: train_classifier on the shards' .cls labels, then fd and modes in its
    features during training (against the held-out shard) and in distgan.evaluate. A classifier trained on
    other images (the shipped MNIST one: 1 channel, 28 px) is refused at start, before the run dir exists."""
    clf = tmp_path / "clf.safetensors"
    r = call("distgan.metrics.train_classifier", "--shards", shards, "--out", str(clf), "--epochs", "4",
             "--batch-size", "4")  # fmt: skip
    assert "validation accuracy" in r.stdout
    from distgan.metrics.classifier import classifier_info

    info = classifier_info(str(clf))
    assert (info["channels"], info["image_size"], info["num_classes"]) == (3, 32, 2)
    common = [
        "data.dataset=webdataset", f"data.urls={shards}", "data.image_size=32", "data.channels=3", "data.workers=0",
        "data.holdout_shards=1", "model.generator=dcgan", "model.discriminator=dcgan", "model.width=8",
        "train.batch_size=4", "train.max_steps=4", "train.ckpt_every=4", "eval.every=2", "eval.num=8", "eval.block=4",
        "eval.metrics=fd,modes", "eval.best_metric=fd",
    ]  # fmt: skip
    # with D's overfitting measure beside them: 4 training reals (of 12; eval.num 8, the held-out shard 4)
    train_here(tmp_path / "run", *common[:-2], "eval.metrics=fd,modes,overfit", "eval.best_metric=fd",
               f"eval.classifier={clf}")  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fds = [r["eval/fd"] for r in rows if "eval/fd" in r]
    assert len(fds) == 2 and all(v > 0 for v in fds) and all(r["eval/modes_total"] == 2 for r in rows if "eval/fd" in r)
    gaps = [r for r in rows if "eval/d_overfit" in r]
    assert len(gaps) == 2 and all(np.isfinite(r["eval/d_overfit"]) and r["eval/d_real_train"] != r["eval/d_fake"]
                                  for r in gaps)  # fmt: skip
    out = tmp_path / "eval.json"
    held_out = shards.replace("{000000..000003}", "000003")
    call("distgan.evaluate", "--checkpoint", str(tmp_path / "run"), "--metrics", "fd,modes", "--num", "8",
         "--classifier", str(clf), "--reference", held_out, "--json", str(out))  # fmt: skip
    assert json.loads(out.read_text())["fd"] > 0

    from distgan.metrics.classifier import WEIGHTS

    r = train_here(tmp_path / "refused", *common, f"eval.classifier={WEIGHTS}", check=False)
    assert r.returncode == 2 and str(WEIGHTS) in r.stderr and "1-channel 28 px" in r.stderr
    assert not (tmp_path / "refused").exists()


def test_colour_mnist_folder_for_the_rgb_examples(tmp_path, data_dir):
    """The RGB folder the docs make offline: MNIST digits in colour, 32 px, one sub-folder per digit (the
    label of each image), written into a new folder only."""
    from PIL import Image

    from distgan.data.mnist import load_split

    out = tmp_path / "rgb"
    call("distgan.data.make_shards", "--from", "colour_mnist", "--num", "12", "--size", "32", "--folder", str(out),
         "--no-progress")  # fmt: skip
    files = sorted(out.rglob("*.png"))
    assert len(files) == 12
    x, y = load_split(data_dir, "train")
    idx = torch.randint(0, x.shape[0], (12,), generator=torch.Generator().manual_seed(0))  # make_shards' draw
    for f in files:
        with Image.open(f) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
        assert f.parent.name == str(int(y[idx[int(f.stem)]]))
    r = call("distgan.data.make_shards", "--from", "colour_mnist", "--num", "4", "--folder", str(out), check=False)
    assert r.returncode == 2 and "not empty" in r.stderr and len(list(out.rglob("*.png"))) == 12
