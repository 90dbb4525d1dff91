"""docs/testing.md, "Threads": what CI runs and what the child processes get."""

import os
import shlex
import sys

import torch

from tests.helpers import REPO, child_env, run


def ci_commands() -> list[list[str]]:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [c for c in (shlex.split(x, comments=True) for x in lines) if c]


def test_ci_runs_the_whole_suite_and_the_fast_check_with_one_thread():
    """The claim docs/testing.md makes: the whole suite once (the test process on every core, children on
    one thread), and the fast check again with OMP_NUM_THREADS=1; nothing sets threads for the first run."""
    tests = [c for c in ci_commands() if "./launch/test.sh" in c]
    assert tests == [["./launch/test.sh"], ["OMP_NUM_THREADS=1", "./launch/test.sh", "-m", "not slow"]], tests
    assert ["unset", "OMP_NUM_THREADS"] in ci_commands()


def test_this_process_runs_the_threads_it_was_given():
    """Under OMP_NUM_THREADS=1 (CI's second run) the in-process tests really run on one thread."""
    if os.environ.get("OMP_NUM_THREADS"):
        assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])


def test_children_get_one_thread_unless_omp_num_threads_is_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert child_env()["OMP_NUM_THREADS"] == "1"
    p = run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"])
    assert p.stdout.strip() == "1"  # a real child: torch honours it
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert child_env()["OMP_NUM_THREADS"] == "2"  # set: inherited
