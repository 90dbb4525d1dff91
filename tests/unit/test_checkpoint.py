import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from distgan import checkpoint as C


def _write(root, step, net, keep=3):
    return C.save(
        root,
        step,
        {"G.safetensors": C.plain_state_dict(net)},
        {"step": step, "opt": {"lr": 0.1}},
        {"config": {}},
        keep_last=keep,
    )


def test_round_trip_with_plain_names(tmp_path):
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    wrapped = torch.compile(net)  # adds _orig_mod. to state-dict keys
    path = _write(tmp_path, 10, wrapped)
    keys = set(load_file(str(path / "G.safetensors")))
    assert keys == set(net.state_dict()) and not any("_orig_mod" in k or "module." in k for k in keys)
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    C.load_weights(path, "G.safetensors", other)
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert C.load_state(path)["step"] == 10
    assert (tmp_path / "latest").read_text().strip() == path.name
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"G.safetensors", "state.pt"}


def test_keep_last_and_latest(tmp_path):
    net = nn.Linear(2, 2)
    for s in (1, 2, 3, 4):
        _write(tmp_path, s, net, keep=2)
    assert [p.name for p in C.list_checkpoints(tmp_path)] == [C.step_dirname(4), C.step_dirname(3)]


def test_best_survives_pruning_and_is_replaced_only_when_complete(tmp_path):
    net = nn.Linear(2, 2)
    for s in (1, 2, 3, 4, 5):
        _write(tmp_path, s, net, keep=2)
        if s in (2, 4):  # a new best at steps 2 and 4
            C.save(
                tmp_path,
                s,
                {"G.safetensors": C.plain_state_dict(net)},
                {"step": s},
                {"best": {"step": s}},
                keep_last=2,
                name="best",
            )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best", "latest", C.step_dirname(4), C.step_dirname(5)]
    assert C.verify(tmp_path / "best")["best"] == {"step": 4}
    assert (tmp_path / "latest").read_text().strip() == C.step_dirname(5), "best never becomes latest"
    assert C.find_latest_good(tmp_path) == tmp_path / C.step_dirname(5)
    assert C.resolve(tmp_path / "best") == tmp_path / "best"


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_corruption_detected_and_auto_falls_back(tmp_path, damage):
    net = nn.Linear(8, 8)
    good = _write(tmp_path, 1, net)
    bad = _write(tmp_path, 2, net)
    f = bad / "G.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        (bad / "manifest.json").unlink()
    with pytest.raises(C.CheckpointError) as e:
        C.verify(bad)
    assert str(bad) in str(e.value)
    warnings = []
    assert C.find_latest_good(tmp_path, warn=warnings.append) == good
    assert warnings and "skipping bad checkpoint" in warnings[0]


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    path = _write(tmp_path, 1, nn.Linear(3, 4))
    with pytest.raises(C.CheckpointError, match=r"'weight' has shape \[4, 3\] in the checkpoint but \[5, 3\]"):
        C.load_weights(path, "G.safetensors", nn.Linear(3, 5))


def test_state_loads_without_executing_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = _write(tmp_path, 1, nn.Linear(2, 2))
    torch.save({"x": Evil()}, path / "state.pt")
    with pytest.raises(C.CheckpointError, match="safely"):
        C.load_state(path)


def test_failed_write_leaves_previous_checkpoint_and_latest(tmp_path):
    """A file-size limit (what a full disk looks like to the writer: EFBIG/ENOSPC) in the middle of a write."""
    import resource

    net = nn.Linear(256, 256)
    good = _write(tmp_path, 1, net)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # below G.safetensors (263 kB)
    try:
        with pytest.raises(
            C.CheckpointError, match="writing checkpoint step-000000002 .* failed: .*latest still names step-000000001"
        ):
            _write(tmp_path, 2, net)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000000001"]  # no .tmp-* left
    assert (tmp_path / "latest").read_text().strip() == "step-000000001"
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before


def test_latest_naming_a_missing_checkpoint_is_an_error(tmp_path):
    net = nn.Linear(2, 2)
    _write(tmp_path, 1, net)
    _write(tmp_path, 2, net)
    import shutil

    shutil.rmtree(tmp_path / C.step_dirname(2))
    with pytest.raises(
        C.CheckpointError,
        match="names 'step-000000002', which is not a checkpoint directory .* the newest one present is step-000000001",
    ):
        C.find_latest_good(tmp_path)
