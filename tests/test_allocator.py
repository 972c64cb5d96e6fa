"""The glibc heap tuning: applied once, and an opt-out that leaves glibc alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, resource
import numpy as np
from voiceloop.allocator import tune_for_inference
tuned = tune_for_inference()
assert tune_for_inference() is tuned  # once per process
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):  # a step's working set: 20 live 2 MB blocks, all freed at its end
        blocks = [np.ones(1 << 18) for _ in range(20)]
        del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, min(faults[1:]))
"""


def probe(setting: str) -> tuple[str, int]:
    env = {**os.environ, "VOICELOOP_MALLOC_TUNING": setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_heap_reuses_freed_blocks_instead_of_faulting_them_in_again() -> None:
    tuned, faults = probe("1")
    assert tuned == "True"
    assert faults < 100  # 3 x 40 MB of fresh pages would be ~30,000 faults
    untouched, default_faults = probe("0")
    assert untouched == "False"
    # glibc's defaults trim the heap top (> 2x the largest block) after each step and fault it in again
    assert default_faults > 10_000


def test_frozen_heap_skips_what_exists_and_still_collects_new_garbage() -> None:
    import gc
    import weakref

    from voiceloop.allocator import frozen_heap

    class Node:
        pass

    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before  # the imported modules and everything else so far
        cycle = Node()
        cycle.self = cycle  # garbage only the cyclic GC can free, made while frozen
        alive = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert alive() is None
    assert gc.get_freeze_count() == 0
