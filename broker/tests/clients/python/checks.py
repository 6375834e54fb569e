"""A tiny check runner: one line per check ("PASS python/NAME" or
"FAIL python/NAME: why") that scripts/client-tests.sh counts."""

import os
import sys
import time
import traceback
import uuid

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
_results = {"passed": 0, "failed": 0}


def unique(prefix):
    """A name unique to this run, so reruns against one broker don't collide."""
    return f"{prefix}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"


class CheckFailed(AssertionError):
    pass


def expect(cond, what):
    if not cond:
        raise CheckFailed(what)


def expect_eq(got, want, what):
    if got != want:
        raise CheckFailed(f"{what}: expected {want!r}, got {got!r}")


def wait_for(what, timeout_s, cond, interval=0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout_s} s waiting for: {what}")
        time.sleep(interval)


def run(prefix, checks, only=None):
    for fn in checks:
        name = f"{prefix}/{fn.__name__}"
        if only and only not in name:
            continue
        start = time.monotonic()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported
            _results["failed"] += 1
            detail = str(e) or ("timed out" if isinstance(e, TimeoutError) else repr(e))
            why = f"{type(e).__name__}: {detail}".replace("\n", " ")[:600]
            print(f"FAIL {name}: {why}", flush=True)
            traceback.print_exc(file=sys.stderr)
        else:
            _results["passed"] += 1
            print(f"PASS {name} ({time.monotonic() - start:.1f}s)", flush=True)
    return _results["failed"] == 0
