"""What a lab run leaves behind: lab.json (everything), junit.xml (one testcase per scenario;
a failure lists the checks that failed, a scenario not available here is <skipped>, never a
pass) and lab.html (one self-contained page, inline CSS, in the style of `pgvault report`).
PURE apart from ``write``: results in, documents out."""
from __future__ import annotations

import html
import json
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from ...drills.reports import xml_text
from ...status.report import _CSS, COLORS

FORMAT = "pgvault-lab-report"
VERDICT_STATE = {"passed": "OK", "failed": "CRITICAL", "not available": "UNKNOWN"}


def document(results, *, seed, soak_minutes, seconds, interrupted, commands, notes, ledger_errors) -> dict:
    rs = [r.as_dict() for r in results]
    ran = [r for r in rs if r["verdict"] != "not available"]
    return {"format": FORMAT, "version": 1, "host": socket.gethostname(),
            "finished_at": datetime.now(timezone.utc).isoformat(), "seconds": round(seconds, 1),
            "mode": "soak" if soak_minutes is not None else "run", "seed": seed, "soak_minutes": soak_minutes,
            "interrupted": interrupted,
            "passed": bool(ran) and all(r["verdict"] == "passed" for r in ran) and not interrupted,
            "counts": {v: sum(1 for r in rs if r["verdict"] == v) for v in ("passed", "failed", "not available")},
            "scenarios": rs, "notes": notes, "ledger_errors": ledger_errors[-50:], "commands": commands}


def summary(doc: dict) -> str:
    c = doc["counts"]
    head = (f"lab {doc['mode']}" + (f" (seed {doc['seed']}, {doc['soak_minutes']} min)" if doc["mode"] == "soak" else "")
            + f": {'PASSED' if doc['passed'] else 'FAILED'} in {doc['seconds']}s — {c['passed']} passed, "
            f"{c['failed']} failed, {c['not available']} not available")
    lines = [head]
    for r in doc["scenarios"]:
        t = ", ".join(f"{k} {v}" for k, v in r["timings"].items() if v is not None)
        lines.append(f"  {r['verdict'].upper():14} {r['name']:18} {r['seconds']:6.1f}s  {t}")
        if r["verdict"] == "failed":
            lines += [f"      FAIL {c['name']}: {c['detail'][:400]}" for c in r["checks"] if not c["ok"]]
    lines += [f"  note: {n[:400]}" for n in doc["notes"]]
    return "\n".join(lines)


def junit_xml(doc: dict) -> bytes:
    rs = doc["scenarios"]
    failed = doc["counts"]["failed"]
    skipped = doc["counts"]["not available"]
    suites = ET.Element("testsuites", name="pgvault lab", tests=str(len(rs)), failures=str(failed), errors="0",
                        time=f"{doc['seconds']:.1f}")
    suite = ET.SubElement(suites, "testsuite", name="pgvault.lab", tests=str(len(rs)), failures=str(failed),
                          errors="0", skipped=str(skipped), time=f"{doc['seconds']:.1f}",
                          timestamp=doc["finished_at"][:19], hostname=doc["host"])
    for r in rs:
        case = ET.SubElement(suite, "testcase", classname="pgvault.lab", name=r["name"], time=f"{r['seconds']:.2f}")
        lines = [r["title"], "timings: " + json.dumps(r["timings"])]
        lines += [f"[{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}" for c in r["checks"]]
        lines += [f"note: {n}" for n in r["notes"]]
        if r["verdict"] == "failed":
            bad = [c for c in r["checks"] if not c["ok"]]
            f = ET.SubElement(case, "failure", message=xml_text("; ".join(c["name"] for c in bad)[:500]),
                              type="LabScenarioFailed")
            f.text = xml_text("\n".join(lines))
        elif r["verdict"] == "not available":
            ET.SubElement(case, "skipped", message=xml_text("not available: " + "; ".join(r["notes"])))
        ET.SubElement(case, "system-out").text = xml_text("\n".join(lines))
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _badge(verdict: str) -> str:
    color = COLORS[VERDICT_STATE[verdict]]
    return f'<span class="state" style="background:{color}">{_e(verdict)}</span>'


def render_html(doc: dict) -> str:
    c = doc["counts"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>pgvault lab</title><style>{_CSS}</style>"
             "</head><body>", f"<h1>pgvault lab {_e(doc['mode'])}</h1>",
             f"<p>{_badge('passed' if doc['passed'] else 'failed')} {c['passed']} passed, {c['failed']} failed, "
             f"{c['not available']} not available, in {doc['seconds']} s on {_e(doc['host'])}"
             + (f"; seed {_e(doc['seed'])}" if doc["seed"] is not None else "") + f"<br>{_e(doc['finished_at'])}</p>",
             "<table><tr><th>verdict</th><th>scenario</th><th>seconds</th><th>detect</th><th>RTO</th><th>RPO</th>"
             "<th>checks</th></tr>"]
    for r in doc["scenarios"]:
        t = r["timings"]
        ok = sum(1 for x in r["checks"] if x["ok"])
        parts.append(f"<tr id='row-{_e(r['name'])}' data-verdict='{_e(r['verdict'])}'><td>{_badge(r['verdict'])}</td>"
                     f"<td><a href='#{_e(r['name'])}'>{_e(r['name'])}</a></td><td>{r['seconds']}</td>"
                     f"<td>{_e(t.get('detect_seconds', '-'))}</td><td>{_e(t.get('rto_seconds', '-'))}</td>"
                     f"<td>{_e(t.get('rpo_seconds', '-'))}</td><td>{ok}/{len(r['checks'])}</td></tr>")
    parts.append("</table>")
    for r in doc["scenarios"]:
        parts.append(f"<h2 id='{_e(r['name'])}'>{_badge(r['verdict'])} {_e(r['name'])}: {_e(r['title'])}</h2>")
        parts.append("<p>timings: " + _e(json.dumps(r["timings"])) + "</p>")
        parts += [f"<p>note: {_e(n)}</p>" for n in r["notes"]]
        if r["checks"]:
            parts.append("<table><tr><th></th><th>check</th><th>evidence</th><th>s</th></tr>")
            parts += [f"<tr class='{'ok' if x['ok'] else 'fail'}'><td>{'ok' if x['ok'] else '<b>FAIL</b>'}</td>"
                      f"<td>{_e(x['name'])}</td><td>{_e(x['detail'][:1500])}</td><td>{x['seconds']}</td></tr>"
                      for x in r["checks"]]
            parts.append("</table>")
    if doc["notes"]:
        parts.append("<h2>Notes</h2>" + "".join(f"<p>{_e(n)}</p>" for n in doc["notes"]))
    parts.append("<h2>Commands run</h2><table><tr><th>exit</th><th>s</th><th>command</th></tr>")
    parts += [f"<tr><td>{x['exit']}</td><td>{x['seconds']}</td><td><code>{_e(x['command'])}</code></td></tr>"
              for x in doc["commands"]]
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write(doc: dict, report_dir) -> list[Path]:
    d = Path(report_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / "junit.xml", d / "lab.json", d / "lab.html"]
    paths[0].write_bytes(junit_xml(doc))
    paths[1].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths[2].write_text(render_html(doc))
    return paths
