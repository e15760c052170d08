"""Sites: where backups are kept. One explicit registry; adding a driver is one line."""
from __future__ import annotations

from .base import ObjectInfo, Site  # noqa: F401
from .local import LocalSite
from .s3 import S3Site

SITES = {
    "local": LocalSite,
    "s3": S3Site,
}


def open_site(name: str, config) -> Site:
    """Build the driver for one configured site."""
    return SITES[config.type](name, config)


def open_sites(policy, names: list[str] | None = None) -> dict[str, Site]:
    """Drivers for the named sites (all sites by default), in the order given."""
    names = list(policy.sites) if names is None else names
    return {n: open_site(n, policy.sites[n]) for n in names}
