"""launch/gpu_check.sh, as it runs without a GPU: every section on the CPU at tiny sizes, so the script
that will meet the first GPU cannot rot before then."""

import pytest

from tests.helpers import REPO, child_env, run

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]


def test_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.txt"
    p = run(["bash", str(REPO / "launch" / "gpu_check.sh"), "--out", str(out)], env=child_env(), timeout=360)
    text = out.read_text()
    assert all(line in p.stdout for line in text.splitlines()), "the file is what was printed"
    assert "CPU, tiny sizes, fp32" in text and "FAILED" not in text, text[-3000:]
    for n in range(1, 6):
        assert f"\n== {n}. " in text
    for config in ("mnist_paper", "mnist_dcgan"):
        table = text.split(f"config configs/{config}.yaml")[1]
        assert "\ntrainer  eager     fp32" in table and "launch-bound ceiling" in table
    assert "Parzen" in text and "best checkpoint (step" in text
    assert "8 steps straight vs 4 + resume to 8" in text and "bitwise identical" in text
    assert "2 processes on one CPU (gloo): ran 20 steps" in text and "world size 2" in text
