"""Inception FID/KID/IS offline, with a weights file of the real architecture and random weights made here
(the real file cannot be downloaded on this machine): against torch-fidelity's own entry point, the FD
maths in closed form, reference statistics and their cache, and missing or wrong weights."""

import json
import math

import numpy as np
import pytest
import torch

from distgan.metrics import fidelity, inception
from tests.helpers import call, tree_snapshot


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    return inception.write_random_weights(tmp_path_factory.mktemp("inception") / inception.WEIGHTS_NAME, seed=0)


def write_folder(path, images):
    from PIL import Image

    path.mkdir(parents=True)
    for i, x in enumerate(images):
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(path / f"{i:03d}.png")
    return path


def images(n, seed, smooth=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    if smooth:  # another distribution: blurred, so the two sets differ in their statistics
        x = torch.nn.functional.avg_pool2d(x.float(), 5, 1, 2).round().to(torch.uint8)
    return x


@pytest.mark.slow  # Inception forwards at 299 px: seconds per dozen images on a CPU
def test_figures_equal_torch_fidelity_on_two_folders_and_another_resize_does_not(tmp_path, weights):
    """distgan's FID, KID and IS of folder A against folder B equal torch-fidelity's ``calculate_metrics`` on the
    same folders and weights file.

    Tolerance, derived: both read each PNG with PIL as RGB, sort the files by real path, and feed the same
    extractor batches of the same 5 uint8 images (our --block 5 = its batch_size 5), so the features are the
    same bits; the figures are then torch-fidelity's functions of the same arrays with the same seeds, so
    the difference is exactly zero (JSON keeps a float's every digit). Negative control: the same images
    resized to 299 by PIL's bicubic filter before the extractor (another resize, the classic source of FID
    discrepancies) must land outside, by more than 1% (not rounding)."""
    import torch_fidelity

    a = write_folder(tmp_path / "a", images(10, 0))
    b = write_folder(tmp_path / "b", images(10, 1, smooth=True))
    lib = torch_fidelity.calculate_metrics(
        input1=str(a),
        input2=str(b),
        cuda=False,
        fid=True,
        kid=True,
        isc=True,
        feature_extractor_weights_path=str(weights),
        batch_size=5,
        kid_subset_size=10,
        save_cpu_ram=True,
        cache=False,
        verbose=False,
        samples_find_deep=True,
    )
    out = tmp_path / "ours.json"
    r = call(
        "distgan.evaluate", "--samples", str(a), "--reference", str(b), "--metrics", "fid,kid,is",
        "--inception-weights", str(weights), "--block", "5", "--json", str(out),
    )  # fmt: skip
    ours = json.loads(out.read_text())
    assert "fid" in r.stdout
    assert ours["fid"] == lib["frechet_inception_distance"] and ours["fid"] > 0
    assert ours["kid"] == lib["kernel_inception_distance_mean"] and ours["kid_subset"] == 10
    assert ours["is"] == lib["inception_score_mean"]

    # negative control: bicubic to 299 first (the extractor's own resize then has nothing left to do)
    from PIL import Image

    def bicubic(x):
        return torch.stack(
            [
                torch.from_numpy(
                    np.array(Image.fromarray(i.permute(1, 2, 0).numpy()).resize((299, 299), Image.BICUBIC))
                ).permute(2, 0, 1)
                for i in x
            ]
        )

    net = inception.load_extractor(weights)
    fa = inception.features(bicubic(images(10, 0)), net, 5)
    ref = fidelity.Reference.from_features(inception.features(bicubic(images(10, 1, smooth=True)), net, 5)["2048"], {})
    other = fidelity.figures(fa, ref, ("fid",))["fid"]
    assert abs(other - ours["fid"]) > 0.01 * ours["fid"], (other, ours["fid"])


def test_frechet_distance_of_two_gaussians_in_closed_form():
    """FD of N(m1, C1) and N(m2, C2) = |m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2); for commuting (diagonal)
    covariances tr (C1 C2)^1/2 = sum sqrt(a_i b_i). torch-fidelity's function (what distgan reports) and
    distgan's own (the classifier FD) both give it; float64 on 4x4 matrices: 1e-9 is 10^6 ulps of slack."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    from distgan.metrics.scores import frechet_distance

    m1, m2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.5])
    a, b = np.array([1.0, 2.0, 0.5, 4.0]), np.array([2.0, 0.5, 0.5, 1.0])
    want = ((m1 - m2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    got = fid_statistics_to_metric({"mu": m1, "sigma": np.diag(a)}, {"mu": m2, "sigma": np.diag(b)}, False)
    assert math.isclose(got["frechet_inception_distance"], want, rel_tol=1e-9)
    # a rotated (non-diagonal) pair: FD is invariant to rotating both
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    ours = frechet_distance(*(torch.from_numpy(t) for t in (q @ m1, c1, q @ m2, c2)))
    assert math.isclose(ours, want, rel_tol=1e-9)
    # and a wrong square root (tr(C1 C2) instead of its root) would not
    assert not math.isclose(((m1 - m2) ** 2).sum() + (a + b - 2 * a * b).sum(), want, rel_tol=1e-3)


@pytest.mark.slow
def test_reference_cache_hit_miss_after_a_byte_changes_and_a_corrupt_file_refused(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("DISTGAN_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_folder(tmp_path / "ref", images(4, 2))
    src = fidelity.Source(str(folder))
    first, hit = fidelity.cached_reference(src, weights, block=8)
    assert not hit and first.meta["num"] == 4 and first.meta["feature_net"] == inception.weights_hash(weights)
    again, hit = fidelity.cached_reference(src, weights, block=8)
    assert hit and np.array_equal(again.sigma, first.sigma)
    # one image's bytes change: another content hash, so a miss, and other statistics
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "003.png")
    changed, hit = fidelity.cached_reference(src, weights, block=8)
    assert not hit and changed.meta["content"] != first.meta["content"]
    assert not np.array_equal(changed.mu, first.mu)

    # --make-reference writes a file; corrupt, it is refused by name (exit 2), a good one is used
    ref = tmp_path / "ref.safetensors"
    call(
        "distgan.evaluate", "--make-reference", str(folder), "--out", str(ref), "--inception-weights", str(weights),
        "--block", "8",
    )  # fmt: skip
    meta = fidelity.Reference.load(ref).meta
    assert meta["num"] == 4 and meta["resize"] == inception.RESIZE and meta["content"] == changed.meta["content"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(ref.read_bytes()[:1000])
    r = call(
        "distgan.evaluate", "--samples", str(folder), "--reference", str(bad), "--metrics", "fid",
        "--inception-weights", str(weights), check=False,
    )  # fmt: skip
    assert r.returncode == 2 and str(bad) in r.stderr and "corrupt" in r.stderr
    # statistics made with other weights are refused, not silently compared
    other = inception.write_random_weights(tmp_path / "other.pth", seed=1)
    r = call(
        "distgan.evaluate", "--samples", str(folder), "--reference", str(ref), "--metrics", "fid",
        "--inception-weights", str(other), check=False,
    )  # fmt: skip
    assert r.returncode == 2 and str(ref) in r.stderr and inception.weights_hash(other) in r.stderr


def test_missing_or_wrong_weights_exit_2_naming_the_file_and_the_fetch_command(tmp_path, data_dir, monkeypatch):
    """Nothing is downloaded: a missing file, a file that is not weights, and the weights of another network
    each end `distgan.evaluate` and `distgan.train` with exit 2 and one message naming the file; the run
    dir is not created."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch-fidelity cache
    monkeypatch.delenv(inception.ENV, raising=False)
    r = call("distgan.evaluate", "--real", "test", "--num", "8", "--metrics", "fid", check=False)
    assert r.returncode == 2
    assert inception.WEIGHTS_NAME in r.stderr and str(tmp_path / "torch-home") in r.stderr
    assert "curl -L -o" in r.stderr and inception.WEIGHTS_URL in r.stderr

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file")
    mlp = tmp_path / "mlp.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), mlp)
    for path, why in ((junk, "not a PyTorch weights file"), (mlp, "keys missing")):
        r = call(
            "distgan.evaluate", "--real", "test", "--num", "8", "--metrics", "fid", "--inception-weights", str(path),
            check=False,
        )  # fmt: skip
        assert r.returncode == 2 and str(path) in r.stderr and why in r.stderr, r.stderr
        run = tmp_path / f"run-{path.stem}"
        r = call(
            "distgan.train", "--config", "configs/debug.yaml", "--run-dir", str(run), "eval.metrics=fid",
            "eval.best_metric=fid", f"eval.inception_weights={path}", "train.progress=false", check=False,
        )  # fmt: skip
        assert r.returncode == 2 and str(path) in r.stderr, r.stderr
        assert not run.exists()
    # the environment variable is honoured (and named when it points nowhere)
    monkeypatch.setenv(inception.ENV, str(tmp_path / "nowhere.pth"))
    r = call("distgan.evaluate", "--real", "test", "--num", "8", "--metrics", "fid", check=False)
    assert r.returncode == 2 and "nowhere.pth" in r.stderr and inception.ENV in r.stderr
    assert not (tmp_path / "torch-home").exists() or tree_snapshot(tmp_path / "torch-home") == {}  # nothing fetched
