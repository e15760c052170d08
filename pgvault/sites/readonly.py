"""Reading sites within a bounded time, for the read-only commands (check, status, wal-status,
list). A monitoring check that answers after nine minutes is a dead check: these commands
must answer within seconds whatever the sites do, and name the sites that did not answer.

Two things bound them, both set by ``monitoring.site_timeout`` (default 10 s):

- ``impatient(config, t)``: a site configuration whose S3 requests give up after ``t``
  (connect and read timeouts capped, at most two attempts), so a probe of a dead endpoint
  ends by itself soon after the deadline instead of after the policy's full timeouts;
- ``Probes``: one daemon thread per site, all started at once and joined against one
  ``Deadline``; a site whose thread has not answered by then is reported as
  ``SiteUnreachable("no answer within N s")`` and its thread is abandoned (daemon threads do
  not hold the process back). A request the caps cannot bound (a server that trickles bytes)
  therefore still cannot delay the command.

A site that *is* answering is not cut off: every S3 response a probe receives counts as a
sign of life, and a probe still receiving them at the deadline is given until it has gone
one whole ``site_timeout`` without any (listing a healthy bucket of a million WAL segments
takes many pages; none of them is a partition).

Writes (backup, wal-push, expire) keep the policy's full timeouts: a slow upload must be
given the time the policy grants it. Nothing here is for them."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import PgvaultError, SiteUnreachable

class Deadline:
    """An instant ``seconds`` from now (monotonic): one per command, shared by its reads.

    >>> d = Deadline(10); 9 < d.remaining() <= 10 and not d.passed()
    True
    >>> Deadline(0).remaining()
    0.0
    """

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return self.remaining() == 0.0


def impatient(config, timeout: float):
    """``config`` with its request timeouts capped at ``timeout`` seconds (and, for S3, two
    attempts: a dropped connection is retried once, a dead endpoint is not waited for); each
    site type says what that means for it (``impatient`` on its configuration)."""
    return config.impatient(timeout)


def site_timeout(policy) -> float:
    """Seconds a read-only command waits for any one site (``monitoring.site_timeout``)."""
    return policy.monitoring.site_timeout.total_seconds()


_current = threading.local()  # the (Probes, site name) a probe thread works for


def open_readonly(policy, name: str):
    """The driver of one configured site, with the read-only (capped) timeouts. Opened in a
    probe thread, every response it receives tells that probe the site is alive."""
    from . import open_site

    site = open_site(name, impatient(policy.sites[name], site_timeout(policy)))
    owner = getattr(_current, "probe", None)
    if owner is not None:
        probes, pname = owner
        site.on_response(lambda: probes._alive(pname))
    return site


@dataclass
class Answer:
    """What one site's probe returned (``value``), or why there is no value (``error``: the
    probe's PgvaultError or OSError, or SiteUnreachable when it did not answer in time)."""

    value: Any = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def message(self) -> str:
        return getattr(self.error, "message", None) or str(self.error)


_abandoned: list[threading.Thread] = []


def abandoned() -> int:
    """Probe threads given up on that are still running (the CLI ends the process without
    the interpreter's teardown when there are any: nothing of theirs is wanted)."""
    return sum(1 for t in _abandoned if t.is_alive())


class Probes:
    """Run ``fn(name)`` for every name at once, one daemon thread each; ``wait(deadline)``
    collects an Answer per name, in the order given.

    PgvaultError and OSError from ``fn`` are the site's answer (an unreachable or broken
    site); any other exception is a bug and is raised again in the caller's thread.

    >>> p = Probes(["a", "b"], lambda n: n.upper())
    >>> {n: a.value for n, a in p.wait(Deadline(5)).items()}
    {'a': 'A', 'b': 'B'}
    >>> import threading; hang = threading.Event()
    >>> r = Probes(["slow"], lambda n: hang.wait(30)).wait(Deadline(0.05))["slow"]
    >>> r.ok, r.message
    (False, "site 'slow': no answer within 0.05 s")
    >>> hang.set()

    A probe that keeps receiving responses (here: told so directly) is waited for past the
    deadline, as long as it never goes a whole deadline's length without one:

    >>> def long_listing(n):
    ...     probes, _name = _current.probe
    ...     for _ in range(15):
    ...         probes._alive(n); time.sleep(0.2)   # one page every 0.2 s, 3 s in all
    ...     return "listed"
    >>> Probes(["big"], long_listing).wait(Deadline(2))["big"].value
    'listed'
    """

    def __init__(self, names, fn: Callable[[str], Any], *, what: str = "probe"):
        self.names = list(names)
        self._answers: dict[str, Answer] = {}
        self._last_answer: dict[str, float] = {}  # monotonic time of the last response received
        self._threads: dict[str, threading.Thread] = {}
        for name in self.names:
            t = threading.Thread(target=self._run, args=(name, fn), name=f"{what}-{name}", daemon=True)
            self._threads[name] = t
            t.start()

    def _alive(self, name: str) -> None:
        self._last_answer[name] = time.monotonic()

    def _run(self, name: str, fn) -> None:
        _current.probe = (self, name)
        try:
            answer = Answer(value=fn(name))
        except (PgvaultError, OSError) as exc:
            answer = Answer(error=exc)
        except BaseException as exc:  # a bug: handed to the caller, who raises it
            answer = Answer(error=_Bug(exc))
        self._answers[name] = answer

    def wait(self, deadline: Deadline) -> dict[str, Answer]:
        out = {}
        for name in self.names:
            t = self._threads[name]
            t.join(deadline.remaining())
            while t.is_alive() and name in self._last_answer:
                # Still answering (a long listing): wait while it has answered within site_timeout.
                quiet_until = self._last_answer[name] + deadline.seconds
                if quiet_until <= time.monotonic():
                    break
                t.join(quiet_until - time.monotonic())
            answer = self._answers.get(name)
            if answer is None:
                _abandoned.append(t)
                what = ("no answer within" if name not in self._last_answer
                        else "stopped answering: nothing for")
                answer = Answer(error=SiteUnreachable(
                    f"site {name!r}: {what} {deadline.seconds:g} s",
                    "the site or the network to it hangs (requests neither answered nor refused); "
                    "check endpoint_url, the network and the store. monitoring.site_timeout sets this bound"))
            elif isinstance(answer.error, _Bug):
                raise answer.error.exc
            out[name] = answer
        return out


class _Bug(Exception):
    def __init__(self, exc: BaseException):
        super().__init__(repr(exc))
        self.exc = exc
