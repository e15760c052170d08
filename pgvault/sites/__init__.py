"""Sites: where backups are kept. One explicit registry; adding a driver is one line.

The memory driver (pgvault.sites.memory) is not in the registry on purpose: a policy's site
outlives a process, a memory site does not (see that module)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from .base import Capabilities, ObjectInfo, Site  # noqa: F401
from .local import LocalSite
from .s3 import S3Site

SITES = {
    "local": LocalSite,
    "s3": S3Site,
}

# Test-only: site name -> a function given the driver just opened that returns the Site to use
# instead (a FaultySite around it, a shared MemorySite). It acts only on sites opened by this
# process: a command run as a subprocess (the tick's jobs, archive_command) never sees it.
# Production code never sets it (tests/arch checks that only this module names it).
_WRAPPERS: dict[str, Callable[[Site], Site]] = {}


@contextmanager
def wrapping(name: str, wrap: Callable[[Site], Site]) -> Iterator[None]:
    """Test-only: while inside, every ``open_site`` of site ``name`` returns ``wrap(driver)``.

    >>> from pgvault.sites.memory import MemorySite
    >>> from pgvault.sites.local import LocalSiteConfig
    >>> mem = MemorySite("a")
    >>> with wrapping("a", lambda driver: mem):
    ...     open_site("a", LocalSiteConfig(type="local", path="/nonexistent")) is mem
    True
    >>> isinstance(open_site("a", LocalSiteConfig(type="local", path="/nonexistent")), LocalSite)
    True
    """
    if name in _WRAPPERS:
        raise RuntimeError(f"site {name!r} is already wrapped")
    _WRAPPERS[name] = wrap
    try:
        yield
    finally:
        del _WRAPPERS[name]


def open_site(name: str, config) -> Site:
    """Build the driver for one configured site."""
    site = SITES[config.type](name, config)
    wrap = _WRAPPERS.get(name)
    return wrap(site) if wrap else site


def open_sites(policy, names: list[str] | None = None) -> dict[str, Site]:
    """Drivers for the named sites (all sites by default), in the order given."""
    names = list(policy.sites) if names is None else names
    return {n: open_site(n, policy.sites[n]) for n in names}
