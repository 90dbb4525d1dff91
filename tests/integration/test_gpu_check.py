"""launch/gpu_check.sh, as it runs without a GPU: every section on the CPU at tiny sizes, so the script
that will meet the first GPU cannot rot before then. It runs as on a GPU box that has only torch and
accelerate: the optional packages are hidden from every process it starts."""

import pytest

from tests.helpers import REPO, child_env, run

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

OPTIONAL = ("wandb", "webdataset", "einops", "torchvision", "PIL")
# sys.path's finder, made blind to the optional packages: find_spec gives None and import fails, as when
# they are not installed
HIDE = f"""import sys
from importlib.machinery import PathFinder
class _Blind(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in {OPTIONAL!r} else PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [_Blind if f is PathFinder else f for f in sys.meta_path]
"""


def test_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.txt"
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE)  # imported at start by every Python process it launches
    env = child_env({"PYTHONPATH": str(hide)})
    p = run(["bash", str(REPO / "launch" / "gpu_check.sh"), "--out", str(out)], env=env, timeout=360)
    text = out.read_text()
    assert "einops no" in text and "wandb no" in text and "torchvision no" in text, text[:2000]
    assert all(line in p.stdout for line in text.splitlines()), "the file is what was printed"
    assert "CPU, tiny sizes, fp32" in text and "FAILED" not in text, text[-3000:]
    assert "== 6. Inception" in text and "skipped: torch-fidelity cannot be imported" in text  # no torchvision
    for n in range(1, 6):
        assert f"\n== {n}. " in text
    for config in ("mnist_paper", "mnist_dcgan"):
        table = text.split(f"config configs/{config}.yaml")[1]
        assert "\ntrainer  eager     fp32" in table and "launch-bound ceiling" in table
    assert "Parzen" in text and "best checkpoint (step" in text
    assert "8 steps straight vs 4 + resume to 8" in text and "bitwise identical" in text
    assert "2 processes on one CPU (gloo): ran 20 steps" in text and "world size 2" in text
