"""What a run writes for people: the progress output in a log file, and the sample grid layout."""

import torch

from tests.helpers import train_here


def test_progress_in_a_log_file_is_one_line_per_log_tick(tmp_path, data_dir):
    """stdout and stderr are not terminals here (as in a SLURM job): no bar redrawn several times a second,
    one plain line per log tick."""
    p = train_here(tmp_path / "r", "model.width=16", "train.max_steps=6", "train.log_every=2", "train.progress=true")
    lines = [x for x in p.stdout.splitlines() if x.startswith("[distgan] step ")]
    assert [x.split(" | ")[0] for x in lines] == ["[distgan] step 2/6", "[distgan] step 4/6", "[distgan] step 6/6"]
    assert all("lossD" in x and "img/s" in x for x in lines)
    assert "\r" not in p.stdout + p.stderr and "it/s" not in p.stderr


def test_image_grid_matches_torchvision_layout():
    """The grid is torchvision's make_grid layout (2-pixel black border, square by default), built without
    importing torchvision (1.3 s of every start-up)."""
    import torchvision

    from distgan.tracking import image_grid

    for n, c in ((16, 1), (37, 1), (5, 3)):
        x = torch.randint(0, 256, (n, c, 28, 28), dtype=torch.uint8)
        ours = image_grid(x)
        ref = torchvision.utils.make_grid(x, nrow=int(n**0.5 + 0.999), padding=2, pad_value=0).permute(1, 2, 0)
        assert torch.equal(torch.from_numpy(ours), ref[..., :c])
