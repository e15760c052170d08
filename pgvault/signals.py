"""Signals around work that must clean up after itself (a drill's scratch instance, a standby's
paused replay): one way for every caller.

- ``raising(kind)``: SIGTERM and SIGHUP raise ``kind`` (a KeyboardInterrupt, like Ctrl-C's), so
  every ``finally`` on the way out runs — a CI timeout's SIGTERM leaves nothing behind.
- ``deferred()``: SIGINT, SIGTERM and SIGHUP are held while a teardown or a revert runs; it yields
  the list of signals received, for the caller to act on once the work is safe.

Both do nothing outside the main thread (Python delivers signals there only; its caller owns
them)."""
from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP (Ctrl-C is a KeyboardInterrupt already)."""


@contextlib.contextmanager
def raising(kind: type[KeyboardInterrupt] = Interrupted):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise kind(f"signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred():
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield pending
    finally:
        for s, h in old.items():
            signal.signal(s, h)
