"""docs/testing.md, "Threads": what CI runs and what the child processes get."""

import shlex
import sys

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


def test_children_get_one_thread_unless_omp_num_threads_is_set(monkeypatch):
    """Real child processes: one thread by default; OMP_NUM_THREADS=2 in the parent is inherited and torch
    runs that many (what CI's second run relies on for the test process itself, with 1)."""
    threads = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert child_env()["OMP_NUM_THREADS"] == "1"
    assert run(threads).stdout.strip() == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert child_env()["OMP_NUM_THREADS"] == "2"
    assert run(threads).stdout.strip() == "2"
