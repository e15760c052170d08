"""Callers ask a site what it offers (``site.capabilities``, ``config.location_key()``); they
never sniff a driver's attributes or compare site types as strings — that is how a new driver
(a GCS site) would silently be taken for another (a local Barman server). Only pgvault/sites/
knows its drivers, and only it names the test-only wrapping hook."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "pgvault"
SITE_TYPES = r"""["'](?:s3|local|memory)["']"""
SNIFFING = re.compile("|".join([
    r"\b(?:has|get)attr\(\s*(?:self\.)?(?:site|sites\[[^]]*\]|cfg|config|s)\s*,",  # hasattr(site, "client")
    rf"[=!]=\s*{SITE_TYPES}",                                                        # kind == "s3"
    rf"{SITE_TYPES}\s*[=!]=",
    rf"{SITE_TYPES}\s+(?:not\s+)?in\s",                                              # "s3" in kinds
    r"\.type\s*[=!]=",                                                               # cfg.type == ...
    r"isinstance\([^)]*\b(?:LocalSite|S3Site|MemorySite)",                           # type tests of drivers
    r"\bwrapping\(|\b_WRAPPERS\b",                                                   # the test-only hook
]))


def sniffing(text: str) -> list[str]:
    return [f"{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1) if SNIFFING.search(line)]


def test_no_site_sniffing_outside_the_sites_package():
    found = [f"{f.relative_to(ROOT)}:{hit}" for f in sorted(ROOT.rglob("*.py"))
             if f.relative_to(ROOT).parts[0] != "sites" for hit in sniffing(f.read_text())]
    assert found == []


def test_the_check_sees_sniffing():
    bad = ['if hasattr(site, "local_path"):', "x = getattr(self.site, 'list_temporaries', None)",
           'cloud() if kind == "s3" else server()', 'if "local" in kinds:', "if cfg.type != other:",
           "isinstance(s, S3Site)", 'with wrapping("a", f):', 'if not hasattr(config, "read_timeout"):']
    assert [line.split(": ", 1)[1] for line in sniffing("\n".join(bad))] == bad
    assert sniffing('if site.capabilities.local_root is not None:\nsource = d.get("source", "local")') == []
