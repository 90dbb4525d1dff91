"""configs/debug.yaml on real MNIST, as a user runs it: train, checkpoints, W&B offline, sample, resume.
The run itself is the session fixture ``debug_run`` (tests/conftest.py)."""

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import call, launch_cmd, module
from tests.helpers import run as run_cmd

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def run(args, env_extra=None, check=True):
    """A CLI in this process (tests/helpers.call); runs that need their own process use module()."""
    return call(*args, env=env_extra, check=check)


def test_checkpoints_exist_and_load(debug_run):
    run_dir, _ = debug_run
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-000000020", "step-000000040"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000000040"
    for name in ("G.safetensors", "D.safetensors", "G_ema.safetensors"):
        sd = load_file(str(ckpts[-1] / name))
        assert sd and all(not k.startswith(("module.", "_orig_mod.")) for k in sd)
        assert all(torch.isfinite(v).all() for v in sd.values())
    manifest = json.loads((ckpts[-1] / "manifest.json").read_text())
    assert manifest["step"] == 40 and manifest["images_seen"] == 4000
    state = torch.load(ckpts[-1] / "state.pt", weights_only=True)
    assert state["step"] == 40 and "opt_G" in state and "opt_D" in state
    assert (run_dir / "config.yaml").exists() and (run_dir / "runs.jsonl").exists()
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["step-000000020.png", "step-000000040.png"]


def read_wandb_log(path) -> list:
    """The records of an offline W&B run's ``.wandb`` file, parsed with W&B's own protobuf classes. The file
    is a LevelDB-style log (what ``wandb sync`` reads; this wandb ships no Python reader): a 7-byte header
    (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header (crc32,
    length, type: 1 full, 2 first, 3 middle, 4 last); a block's tail shorter than a header is padding."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0), data[:7]
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and n == 0:  # zeros: the end of what was written
            break
        assert kind in (1, 2, 3, 4), f"{path}: chunk type {kind} at byte {pos}"
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def test_wandb_offline_run_holds_the_logged_scalars_and_sample_grids(debug_run):
    """The offline run read back: the run has the id distgan keeps, every figure of metrics.jsonl (training
    scalars and evaluation) is in W&B's history at its step with the same value, and the sample grids are
    images whose files hold the pixels of samples/step-*.png; the run ended with an exit record."""
    from PIL import Image

    run_dir, _ = debug_run
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert runs[0].name.endswith(run_id)
    (log,) = runs[0].glob("*.wandb")
    records = read_wandb_log(log)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds.count("run") == 1 and "exit" in kinds, kinds
    assert next(r.run.run_id for r in records if r.HasField("run")) == run_id
    history: dict[int, dict] = {}
    for r in records:
        if r.HasField("history"):
            row = history.setdefault(r.history.step.num, {})
            row.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    assert sorted(history) == [10, 20, 30, 40]
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in logged} == {10, 20, 30, 40} and any("eval/fd" in r for r in logged)
    for r in logged:
        for k, v in r.items():
            if k not in ("step", "time"):
                assert history[r["step"]].get(k) == v, (r["step"], k, v, history[r["step"]].get(k))
    for step in (20, 40):
        row = history[step]
        assert row["samples/_type"] == "image-file" and row["samples/format"] == "png", row
        png = runs[0] / "files" / row["samples/path"]
        assert hashlib.sha256(png.read_bytes()).hexdigest() == row["samples/sha256"]
        ours = run_dir / "samples" / f"step-{step:09d}.png"
        assert np.array_equal(np.asarray(Image.open(png).convert("L")), np.asarray(Image.open(ours).convert("L")))
    assert 10 not in {s for s in history if "samples/path" in history[s]}


def test_metrics_log(debug_run):
    run_dir, _ = debug_run
    rows = [r for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss/D" in (r := json.loads(x))]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    for r in rows:
        assert {"loss/D", "loss/G", "D(x)", "D(G(z))", "img/s", "lr/D"} <= set(r)
        assert 0 < r["D(x)"] < 1 and 0 < r["D(G(z))"] < 1


def test_sample_npz_and_png(debug_run, tmp_path):
    run_dir, _ = debug_run
    out = tmp_path / "s.npz"
    run(["distgan.sample", "--checkpoint", str(run_dir), "--num", "37", "--out", str(out), "--seed", "3"])
    images = np.load(out)["images"]
    assert images.shape == (37, 1, 28, 28) and images.dtype == np.uint8
    again = tmp_path / "s2.npz"
    run(
        [
            "distgan.sample",
            "--checkpoint",
            str(run_dir / "checkpoints" / "step-000000040"),
            "--num",
            "37",
            "--out",
            str(again),
            "--seed",
            "3",
        ]
    )
    assert np.array_equal(np.load(again)["images"], images), "same checkpoint + seed must give the same bytes"
    raw = tmp_path / "raw.npz"
    run(
        [
            "distgan.sample",
            "--checkpoint",
            str(run_dir),
            "--num",
            "37",
            "--out",
            str(raw),
            "--seed",
            "3",
            "--weights",
            "raw",
        ]
    )
    assert not np.array_equal(np.load(raw)["images"], images), "raw and EMA weights gave the same images"
    png = tmp_path / "grid.png"
    run(["distgan.sample", "--checkpoint", str(run_dir), "--num", "16", "--out", str(png)])
    from PIL import Image

    assert Image.open(png).size == (2 + 4 * 30, 2 + 4 * 30)


def test_evaluate_parzen_prints_estimate(debug_run, tmp_path):
    run_dir, _ = debug_run
    js = tmp_path / "e.json"
    p = run(
        ["distgan.evaluate", "--checkpoint", str(run_dir), "--metrics", "parzen", "--num", "500", "--json", str(js)]
    )
    assert "Parzen log-likelihood:" in p.stdout
    res = json.loads(js.read_text())
    assert np.isfinite(res["parzen_ll"]) and res["num"] == 500


def eval_rows(run_dir):
    return [r for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "eval/fd" in (r := json.loads(x))]


def test_in_training_eval_keeps_best(debug_run):
    from distgan.checkpoint import verify

    run_dir, proc = debug_run
    rows = eval_rows(run_dir)
    assert [r["step"] for r in rows] == [20, 40]
    for r in rows:
        assert r["eval/fd"] > 0 and 1 <= r["eval/modes"] <= 10 and 1 <= r["eval/cs"] <= 10
    assert "[distgan] eval step 20: fd" in proc.stdout
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    best = run_dir / "checkpoints" / "best"
    manifest = verify(best)
    winner = min(rows, key=lambda r: r["eval/fd"])
    assert manifest["best"] == {"metric": "fd", "value": winner["eval/fd"], "step": winner["step"]}
    assert manifest["step"] == winner["step"]
    state = torch.load(best / "state.pt", weights_only=True)
    assert state["step"] == winner["step"] and state["best"]["step"] == winner["step"]


def test_evaluate_all_feature_metrics(debug_run, tmp_path):
    run_dir, _ = debug_run
    js = tmp_path / "e.json"
    p = run(
        [
            "distgan.evaluate",
            "--checkpoint",
            str(run_dir / "checkpoints" / "best"),
            "--metrics",
            "fd,cs,modes,pr,nn",
            "--num",
            "500",
            "--block",
            "250",
            "--json",
            str(js),
        ]
    )
    res = json.loads(js.read_text())
    for k in ("fd", "cs", "modes", "mode_kl", "precision", "recall", "density", "coverage", "memorised_share"):
        assert k in res and f"{k} " in p.stdout
    assert res["fd"] > 0 and 0 <= res["precision"] <= 1 and res["num"] == 500
    # 40 steps of training: far from any training image (test images sit at a median 4.38 from the set)
    assert res["memorised_share"] == 0.0 and res["nn_train_dist_median"] > res["test_nn_train_dist_median"]
    bad = run(["distgan.evaluate", "--checkpoint", str(run_dir), "--metrics", "fd,fidd"], check=False)
    assert bad.returncode == 2 and "fidd" in bad.stderr and "Traceback" not in bad.stderr


def test_distributed_evaluate_equals_one_process(debug_run, tmp_path):
    run_dir, _ = debug_run
    ckpt = str(run_dir / "checkpoints" / "step-000000040")
    # the metrics computed from features gathered across ranks (nn and parzen use the gathered images alone,
    # whose equality fd's already shows)
    args = ["--checkpoint", ckpt, "--num", "1000", "--block", "250", "--metrics", "fd,cs,modes,pr"]
    # both in processes with one thread each: the features' float sums then run in the same order
    one = module("distgan.evaluate", *args, "--json", str(tmp_path / "one.json"))
    run_cmd(launch_cmd(2, "-m", "distgan.evaluate", *args, "--json", str(tmp_path / "two.json")), timeout=240)
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    for k in ("eval_seconds", "world_size"):
        a.pop(k), b.pop(k)
    assert a == b
    assert one.stdout.count("fd ") == 1


def test_model_selection_uses_the_validation_split(debug_run, data_dir):
    """The in-training FD is the FD against train[50000:60000], not against the test set."""
    from distgan.config import build
    from distgan.evaluate import assemble, generate_blocks
    from distgan.metrics import suite
    from distgan.sample import load_generator

    run_dir, _ = debug_run
    logged = eval_rows(run_dir)[-1]
    assert logged["step"] == 40
    G, cfg, _ = load_generator(run_dir / "checkpoints" / "step-000000040")
    e = build(json.loads((run_dir / "checkpoints" / "step-000000040" / "manifest.json").read_text())["config"]).eval
    a = assemble(generate_blocks(G, cfg, e.num, e.seed, block=e.block))
    images, feats, probs = a["images"], a["features"], a["probs"]
    valid = suite.compute(images, ("fd",), data_dir, feats, probs, reference="valid")["fd"]
    test = suite.compute(images, ("fd",), data_dir, feats, probs, reference="test")["fd"]
    assert logged["eval/fd"] == pytest.approx(valid, rel=1e-9) and valid != pytest.approx(test, rel=1e-3)


def test_report_png(debug_run, tmp_path):
    from PIL import Image

    run_dir, _ = debug_run
    run(["distgan.report", str(run_dir)])
    img = Image.open(run_dir / "report.png")
    assert img.size[0] >= 800 and img.size[1] >= 600
    bad = run(["distgan.report", str(tmp_path)], check=False)
    assert bad.returncode == 2 and "metrics.jsonl" in bad.stderr and not (tmp_path / "report.png").exists()


def test_latent_walk_gif(debug_run, tmp_path):
    from PIL import Image

    run_dir, _ = debug_run
    out = tmp_path / "walk.gif"
    run(
        [
            "distgan.sample",
            "--checkpoint",
            str(run_dir),
            "--interpolate",
            "3",
            "--frames",
            "4",
            "--num",
            "4",
            "--out",
            str(out),
        ]
    )
    gif = Image.open(out)
    assert gif.n_frames == 12 and gif.size == (2 + 2 * 30, 2 + 2 * 30)
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.array(gif.convert("L")))
    assert not np.array_equal(frames[0], frames[1]), "a walk that does not move"
    bad = run(
        ["distgan.sample", "--checkpoint", str(run_dir), "--interpolate", "3", "--out", str(tmp_path / "w.png")],
        check=False,
    )
    assert bad.returncode == 2 and ".gif" in bad.stderr


def test_resume_continues_from_saved_step(debug_run, copy_run):
    run_dir = copy_run(debug_run[0])
    refused = run(
        ["distgan.train", "--config", "configs/debug.yaml", "--run-dir", str(run_dir), "train.max_steps=50"],
        check=False,
    )
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    p = module(
        "distgan.train",
        "--config",
        "configs/debug.yaml",
        "--run-dir",
        str(run_dir),
        "train.max_steps=50",
        "train.resume=auto",
        "train.progress=false",
        "eval.every=0",
        env={"WANDB_MODE": "offline"},
    )
    assert "at step 40" in p.stdout
    rows = [r for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss/D" in (r := json.loads(x))]
    assert [r["step"] for r in rows][-1] == 50 and [r["step"] for r in rows].count(40) == 1
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000000050"
    # the W&B run continues: the resumed start logs into a run with the same id
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)
    starts = [json.loads(x) for x in (run_dir / "runs.jsonl").read_text().splitlines()]
    assert [s["resumed_at_step"] for s in starts] == [None, 40]


def test_allowed_change_on_resume_is_recorded(debug_run, copy_run):
    run_dir = copy_run(debug_run[0])
    p = run(
        [
            "distgan.train",
            "--config",
            "configs/debug.yaml",
            "--run-dir",
            str(run_dir),
            "train.max_steps=42",
            "train.resume=auto",
            "train.progress=false",
            "eval.every=0",
            "train.seed=7",
            "train.allow_changed=train.seed",
        ]
    )
    assert "accepted on resume (train.allow_changed): train.seed 0 -> 7" in p.stdout
    last = json.loads((run_dir / "runs.jsonl").read_text().splitlines()[-1])
    assert last["changed_on_resume"] == {"train.seed": [0, 7]} and last["resumed_at_step"] == 40


def test_dry_run_prints_resolved_config(tmp_path):
    p = run(
        [
            "distgan.train",
            "--config",
            "configs/debug.yaml",
            "--run-dir",
            str(tmp_path / "x"),
            "--dry-run",
            "train.max_steps=7",
        ]
    )
    assert "max_steps: 7" in p.stdout and not (tmp_path / "x").exists()


def test_missing_data_is_one_clear_error(tmp_path):
    p = run(
        ["distgan.train", "--config", "configs/debug.yaml", "--run-dir", str(tmp_path / "r"), "data.download=false"],
        {"DISTGAN_DATA_DIR": str(tmp_path / "empty")},
        check=False,
    )
    assert p.returncode == 2
    assert "DISTGAN_DATA_DIR" in p.stderr and "train-images-idx3-ubyte" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()
