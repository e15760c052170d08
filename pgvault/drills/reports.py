"""What a drill run leaves behind: JUnit XML for CI, report.json and report.md for people, and
an evidence record at each drilled site (``clusters/<cluster>/drills/<drill-id>.json``) so the
proof lives next to the backups it is about."""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from ..catalog import layout
from ..errors import PgvaultError
from ..policy.durations import format_duration
from ..sites import open_site
from ..sites.base import get_bytes, put_bytes

log = logging.getLogger("pgvault.drills.reports")

EVIDENCE_FORMAT = "pgvault-drill"


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).isoformat() if t else None


def _secs(s: float | None) -> str:
    return "-" if s is None else format_duration(s)


def result_doc(r, cluster: str | None = None) -> dict:
    """A result as plain JSON (the evidence record and report.json entries)."""
    doc = {
        "format": EVIDENCE_FORMAT, "version": layout.FORMAT_VERSION,
        "drill_id": r.drill_id, "drill": r.drill, "cluster": cluster, "site": r.site, "method": r.method,
        "target": r.target, "outcome": "passed" if r.ok else "failed", "failure": r.failure,
        "message": r.failure or f"restored {r.restored or '-'} and {len(r.checks)} check(s) passed",
        "backup_id": r.backup_id, "restored": r.restored,
        "started_at": _iso(r.started_at), "finished_at": _iso(r.finished_at),
        "rto_seconds": r.rto_seconds, "rto_budget_seconds": r.rto_budget_seconds, "rpo_seconds": r.rpo_seconds,
        "target_time": _iso(r.target_time), "replayed_until": _iso(r.replayed_until),
        "checks": [{"kind": c.kind, "name": c.name, "status": c.status, "detail": c.detail,
                    "seconds": round(c.seconds, 3)} for c in r.checks],
        "teardown": {"ok": r.teardown.ok, "detail": r.teardown.detail} if r.teardown else None,
        "scratch_dir": r.scratch_dir, "port": r.port, "notes": r.notes, "host": socket.gethostname(),
    }
    if r.evidence:
        doc["evidence"] = r.evidence
    return doc


def store_evidence(policy, r) -> str:
    """Write the result at the site it drilled; returns the key, or why it could not be stored."""
    if r.site not in policy.sites:
        return "not stored: no such site"
    key = layout.drill_key(policy.cluster.name, f"{r.drill_id}")
    try:
        site = open_site(r.site, policy.sites[r.site])
        put_bytes(site, key, (json.dumps(result_doc(r, policy.cluster.name), indent=2) + "\n").encode())
    except PgvaultError as exc:
        log.warning("drill %s: evidence not stored at site %s: %s", r.drill, r.site, exc.message)
        return f"not stored: {exc.message}"
    return key


def list_evidence(policy, sites: list[str]) -> tuple[list[dict], dict[str, str]]:
    """Every evidence record at the given sites, oldest first; and the sites that failed.
    Read-only: the sites are read at once, each within monitoring.site_timeout."""
    from ..sites.readonly import Deadline, Probes, open_readonly, site_timeout

    def read(name: str) -> list[dict]:
        site = open_readonly(policy, name)
        out = []
        for obj in site.list(layout.drills_prefix(policy.cluster.name)):
            if not obj.key.endswith(".json"):
                continue
            try:
                doc = json.loads(get_bytes(site, obj.key))
            except ValueError:
                doc = {"drill_id": obj.key.rsplit("/", 1)[-1][:-5], "outcome": "unreadable"}
            doc["site"] = name
            out.append(doc)
        return out

    docs, failed = [], {}
    for name, answer in Probes(sites, read, what="list").wait(Deadline(site_timeout(policy))).items():
        if answer.ok:
            docs += answer.value
        else:
            failed[name] = answer.message
    docs.sort(key=lambda d: (d.get("started_at") or "", d.get("site") or ""))
    return docs, failed


# -- reports ---------------------------------------------------------------------------------

_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text safe in XML 1.0: tool output may carry control characters no XML parser accepts.

    >>> xml_text("bad" + chr(27) + "[31m byte" + chr(0))
    'bad?[31m byte?'
    """
    return _NOT_XML.sub("?", text)


def junit_xml(results) -> bytes:
    """One testcase per drill x site; a failure carries the message and every check's verdict."""
    failures = sum(1 for r in results if not r.ok)
    total = sum((r.rto_seconds or 0.0) for r in results)
    suites = ET.Element("testsuites", name="pgvault drills", tests=str(len(results)),
                        failures=str(failures), errors="0", time=f"{total:.3f}")
    suite = ET.SubElement(suites, "testsuite", name="pgvault.drills", tests=str(len(results)),
                          failures=str(failures), errors="0", skipped="0", time=f"{total:.3f}",
                          timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                          hostname=socket.gethostname())
    for r in results:
        duration = (r.finished_at - r.started_at).total_seconds() if r.finished_at else 0.0
        case = ET.SubElement(suite, "testcase", classname=f"pgvault.drills.{r.drill}", name=r.case_name,
                             time=f"{duration:.3f}")
        lines = _summary_lines(r)
        if not r.ok:
            f = ET.SubElement(case, "failure", message=xml_text(r.failure or "failed"), type="DrillFailed")
            f.text = xml_text("\n".join([r.failure or "failed", ""] + lines))
        ET.SubElement(case, "system-out").text = xml_text("\n".join(lines))
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


def _summary_lines(r) -> list[str]:
    lines = [f"drill {r.drill} at site {r.site}: {r.method}, target {r.target}",
             f"restored: {r.restored or '-'}",
             f"RTO: {_secs(r.rto_seconds)} (budget {_secs(r.rto_budget_seconds)})"
             + (f"; RPO: {_secs(r.rpo_seconds)}" if r.rpo_seconds is not None else "")]
    lines += [f"  [{c.status.upper()}] {c.detail}" for c in r.checks]
    if r.teardown:
        lines.append(f"teardown: {'ok' if r.teardown.ok else 'FAILED'}: {r.teardown.detail}")
    if r.evidence:
        lines.append(f"evidence: {r.evidence}")
    lines += [f"note: {n}" for n in r.notes]
    return lines


def markdown(results, interrupted: bool = False) -> str:
    ok = sum(1 for r in results if r.ok)
    out = ["# pgvault restore drills", "",
           f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%SZ')} on {socket.gethostname()}: "
           f"**{ok} of {len(results)} passed**" + (" — run interrupted" if interrupted else ""), "",
           "| Drill | Site | Target | Restored | Result | RTO (budget) | RPO | Checks |",
           "|---|---|---|---|---|---|---|---|"]
    for r in results:
        passed = sum(1 for c in r.checks if c.status == "passed")
        out.append(f"| {r.drill} | {r.site} | {r.target} | {r.restored or '-'} | "
                   f"{'PASS' if r.ok else '**FAIL**'} | {_secs(r.rto_seconds)} ({_secs(r.rto_budget_seconds)}) | "
                   f"{_secs(r.rpo_seconds)} | {passed}/{len(r.checks)} |")
    for r in results:
        out += ["", f"## {r.case_name}: {'passed' if r.ok else 'FAILED'}", ""]
        if r.failure:
            out += [f"> {r.failure}", ""]
        out += [f"- {line.strip()}" for line in _summary_lines(r)[1:]]
    return "\n".join(out) + "\n"


def write_reports(results, report_dir: str | os.PathLike, *, interrupted: bool = False,
                  cluster: str | None = None) -> dict[str, Path]:
    """junit.xml, report.json and report.md in ``report_dir`` (created if needed)."""
    d = Path(report_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"junit": d / "junit.xml", "json": d / "report.json", "markdown": d / "report.md"}
    paths["junit"].write_bytes(junit_xml(results))
    doc = {"format": "pgvault-drill-report", "version": 1, "interrupted": interrupted,
           "passed": sum(1 for r in results if r.ok), "failed": sum(1 for r in results if not r.ok),
           "results": [result_doc(r, cluster) for r in results]}
    paths["json"].write_text(json.dumps(doc, indent=2) + "\n")
    paths["markdown"].write_text(markdown(results, interrupted))
    return paths
