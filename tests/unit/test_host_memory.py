"""runtime.keep_freed_host_memory: large CPU tensors come from the heap and stay there when freed, instead of
being mapped and unmapped at every allocation (what made half of a CPU R3GAN step kernel time)."""

import sys

from tests.helpers import run

# In a new process (the setting is process-wide and for good). mallinfo2().hblks counts the blocks glibc
# mapped with mmap; a 64 MB tensor is above any mmap threshold glibc allows (32 MB at most), so by default it
# is one such block: the negative control, in the same process before the setting.
PROBE = """
import ctypes
import torch
from distgan.config import load
from distgan.runtime import build_accelerator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
def mapped_with(n_floats):  # blocks mmapped for the tensor (others, mapped before, stay mapped)
    h = libc.mallinfo2().hblks
    t = torch.ones(n_floats)
    return libc.mallinfo2().hblks - h

before = mapped_with(16 << 20)
build_accelerator(load(None, [__OVERRIDE__]))
after = mapped_with(16 << 20)
kept = libc.mallinfo2().fordblks  # the freed 64 MB stays in the heap, free for the next step
print(before, after, kept)
"""


def probe(override: str) -> list[int]:
    return [int(x) for x in run([sys.executable, "-c", PROBE.replace("__OVERRIDE__", repr(override))]).stdout.split()]


def test_the_trainer_keeps_large_freed_blocks_in_the_heap_and_the_switch_turns_it_off():
    before, after, kept = probe("runtime.keep_host_memory=true")
    assert before >= 1, "a 64 MB tensor was not mmapped by default: the control cannot show the setting"
    assert after == 0 and kept >= 64 << 20, (after, kept)
    before, after, _ = probe("runtime.keep_host_memory=false")
    assert before >= 1 and after >= 1
