"""The two ways distgan writes files: atomic replacement, and whole-line appends."""

import subprocess
import sys

import pytest

from distgan.atomic import append_line, atomic_write_text
from tests.helpers import REPO


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    f = tmp_path / "a.json"
    atomic_write_text(f, "old\n")
    atomic_write_text(f, "new\n")
    assert f.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_append_line_appends_whole_lines(tmp_path):
    f = tmp_path / "log.jsonl"
    append_line(f, '{"step": 1}')
    append_line(f, '{"step": 2}')
    assert f.read_text() == '{"step": 1}\n{"step": 2}\n'


@pytest.mark.parametrize("room", [0, 7])
def test_append_line_cut_off_by_a_full_disk_leaves_whole_lines(tmp_path, room):
    """A file-size limit stands in for a full disk: the kernel writes what fits (``room`` bytes) and then
    fails with EFBIG. The partial line must be cut back off and the error raised."""
    f = tmp_path / "log.jsonl"
    f.write_text("x" * 99 + "\n")
    code = (
        "import resource, sys; from distgan.atomic import append_line\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({100 + room}, {100 + room}))\n"
        "try:\n"
        f"    append_line({str(f)!r}, 'y' * 40)\n"
        "except OSError as e:\n"
        "    print(e.errno); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) == 27  # EFBIG
    assert f.read_text() == "x" * 99 + "\n"
