"""Test support, isolated here: named points in the processor where a resume test may kill it.

PRETRAIN_FAULT=<point>[:<n>] SIGKILLs the process the n-th time it passes <point>, so the tests can
prove that a run killed at that instant resumes into byte-identical output. Unset in normal use,
where each point costs one environment lookup."""
import os
import signal

_passed = {}


def fault_point(name: str) -> None:
    want = os.environ.get("PRETRAIN_FAULT")
    if not want:
        return
    point, _, nth = want.partition(":")
    if point == name:
        _passed[name] = _passed.get(name, 0) + 1
        if _passed[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
