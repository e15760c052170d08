"""The status document as one self-contained HTML page (no network, no CDN: inline CSS and SVG):
a timeline per WAL site — recoverable intervals as bars, holes in red, base backups and forks
as marks, drills as pass/fail marks, "now" and the promised window — then the jobs, the sites,
the drills and the objectives. PURE: status document in, text out (pgvault report --html).

Every drawn element carries its class (interval, hole, base, fork, drill pass|fail, now,
promise) and data-* attributes with the times it stands for, so a browser test can check what
was drawn and where. A tiny inline script records the laid-out boxes in <pre id="layout"> (what
the browser actually drew, read back by the Chromium test)."""
from __future__ import annotations

import html
from datetime import datetime, timedelta

from ..policy.durations import format_duration
from .evaluate import parse_instant

WIDTH, ROW, LEFT, RIGHT = 1000, 46, 90, 20
COLORS = {"OK": "#2e7d32", "WARNING": "#f9a825", "CRITICAL": "#c62828", "UNKNOWN": "#6a1b9a"}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px} h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin-top:6px} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3} .state{font-weight:bold;color:#fff;padding:1px 6px;border-radius:3px}
svg text{font-size:11px;fill:#333} .interval{fill:#43a047} .hole{fill:#e53935} .promise{fill:#1e88e5;opacity:.12}
.base{stroke:#1b5e20;stroke-width:2} .fork{stroke:#8e24aa;stroke-width:2;stroke-dasharray:3 2}
.now{stroke:#000;stroke-width:1.5} .drill.pass{fill:#2e7d32} .drill.fail{fill:#c62828} pre#layout{display:none}
"""

_SCRIPT = """
(function(){var out=[];document.querySelectorAll('svg .mark').forEach(function(e){var r=e.getBoundingClientRect();
out.push({cls:e.getAttribute('class'),site:e.getAttribute('data-site'),iv:e.getAttribute('data-interval'),x:r.left,y:r.top,w:r.width,h:r.height});});
document.getElementById('layout').textContent=JSON.stringify(out);})();
"""


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _t(iso: str | None) -> datetime | None:
    return parse_instant(iso) if iso else None


def _span(doc: dict, now: datetime) -> tuple[datetime, datetime]:
    """The time axis: from the oldest thing drawn (or the promised window's start) to now."""
    starts = [now - timedelta(hours=1)]
    promise = (doc.get("objectives") or {}).get("window_seconds")
    if promise:
        starts.append(now - timedelta(seconds=promise))
    for w in (doc["facts"].get("windows") or {}).values():
        for t in w.get("timelines", []):
            for iv in t["intervals"]:
                starts += [x for x in (_t(iv["start_time"]),) if x]
            for h in t["holes"]:
                starts += [x for x in (_t(h["start_time"]),) if x]
    lo = min(starts)
    return lo, max(now, lo + timedelta(seconds=1))


def _x(t: datetime, lo: datetime, hi: datetime) -> float:
    frac = (t - lo).total_seconds() / (hi - lo).total_seconds()
    return round(LEFT + max(0.0, min(1.0, frac)) * (WIDTH - LEFT - RIGHT), 2)


def timeline_svg(doc: dict, now: datetime) -> str:
    windows = doc["facts"].get("windows") or {}
    lo, hi = _span(doc, now)
    rows = list(windows.items())
    height = 30 + ROW * max(1, len(rows))
    out = [f'<svg id="timeline" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" data-from="{_e(lo.isoformat())}" data-to="{_e(hi.isoformat())}">']
    promise = (doc.get("objectives") or {}).get("window_seconds")
    if promise:
        x0 = _x(now - timedelta(seconds=promise), lo, hi)
        out.append(f'<rect class="promise" x="{x0}" y="4" width="{round(_x(now, lo, hi) - x0, 2)}" height="{height - 24}">'
                   f'<title>promised window</title></rect>')
    for k, (site, w) in enumerate(rows):
        y = 10 + k * ROW
        out.append(f'<text x="4" y="{y + 16}">{_e(site)}</text>')
        if w.get("error"):
            out.append(f'<text x="{LEFT}" y="{y + 16}">cannot be read: {_e(w["error"])}</text>')
            continue
        for t in w["timelines"]:
            for iv in t["intervals"]:
                a, b = _t(iv["start_time"]), _t(iv["end_time"])
                if not a or not b:
                    continue
                xa, xb = _x(a, lo, hi), _x(b, lo, hi)
                out.append(f'<rect class="mark interval" data-site="{_e(site)}" data-timeline="{t["timeline"]}" '
                           f'data-start="{_e(iv["start_time"])}" data-end="{_e(iv["end_time"])}" x="{xa}" y="{y + 4}" '
                           f'width="{max(round(xb - xa, 2), 1)}" height="16"><title>timeline {t["timeline"]}: '
                           f'{_e(iv["start_time"])} .. {_e(iv["end_time"])} from {_e(iv["base"]["method"])} '
                           f'{_e(iv["base"]["backup_id"])}</title></rect>')
                for bid, st in zip(iv["bases"], iv.get("base_stop_times", [])):
                    xs = _x(_t(st), lo, hi)
                    out.append(f'<line class="mark base" data-site="{_e(site)}" data-backup="{_e(bid)}" x1="{xs}" '
                               f'x2="{xs}" y1="{y}" y2="{y + 24}"><title>base {_e(bid)}</title></line>')
            for h in t["holes"]:
                a, b = _t(h["start_time"]), _t(h["end_time"])
                if not a or not b:
                    continue
                xa, xb = _x(a, lo, hi), _x(b, lo, hi)
                out.append(f'<rect class="mark hole" data-site="{_e(site)}" data-start="{_e(h["start_time"])}" '
                           f'data-end="{_e(h["end_time"])}" x="{xa}" y="{y + 2}" width="{max(round(xb - xa, 2), 2)}" '
                           f'height="20"><title>{_e(h["detail"])}</title></rect>')
            # A fork is drawn where the child's interval starts (at its switch point).
            if t.get("parent") is not None and t["intervals"] and t["intervals"][0].get("start_kind") == "switch":
                a = _t(t["intervals"][0]["start_time"])
                if a:
                    xf = _x(a, lo, hi)
                    out.append(f'<line class="mark fork" data-site="{_e(site)}" data-timeline="{t["timeline"]}" '
                               f'x1="{xf}" x2="{xf}" y1="{y}" y2="{y + 24}"><title>timeline {t["timeline"]} '
                               f'branches from {t["parent"]}</title></line>')
        # Drills at the point they restored (pgvault.restore.windows.relate_drills), tied to
        # the interval they proved (data-interval: its index in drawing order; "none": outside).
        k_iv = 0
        proofs = []
        for t in w["timelines"]:
            for iv in t["intervals"]:
                proofs += [(d, str(k_iv)) for d in iv.get("drills", [])]
                k_iv += 1
        proofs += [(d, "none") for d in w.get("unplaced_drills", [])]
        # Drills the window cannot place (no point to restore to, e.g. a logical dump's): at
        # the time they ran, as before.
        seen = {d.get("id") for d, _ in proofs if d.get("at")}
        proofs += [({"drill": d["name"], "id": d.get("id"), "at": d.get("finished_at") or d.get("started_at"),
                     "outcome": "passed" if d.get("state") == "OK" else "failed"}, "none")
                   for d in doc.get("drills") or [] if d.get("site") == site and d.get("id") not in seen]
        for d, where in proofs:
            if not d.get("at"):
                continue
            xd = _x(_t(d["at"]), lo, hi)
            ok = d.get("outcome") == "passed"
            out.append(f'<circle class="mark drill {"pass" if ok else "fail"}" data-site="{_e(site)}" '
                       f'data-interval="{where}" data-at="{_e(d["at"])}" cx="{xd}" cy="{y + 32}" r="5"><title>drill '
                       f'{_e(d["drill"])} ({_e(d["id"])}): {_e(d.get("outcome", "?"))}, restored {_e(d["at"])}'
                       f'</title></circle>')
    xn = _x(now, lo, hi)
    out.append(f'<line class="now" x1="{xn}" x2="{xn}" y1="2" y2="{height - 18}"><title>now</title></line>')
    out.append(f'<text x="{LEFT}" y="{height - 4}">{_e(lo.strftime("%Y-%m-%d %H:%M"))}Z</text>')
    out.append(f'<text x="{WIDTH - RIGHT - 110}" y="{height - 4}">now {_e(now.strftime("%Y-%m-%d %H:%M"))}Z</text>')
    out.append("</svg>")
    return "\n".join(out)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c.markup}</td>" if isinstance(c, _Html) else f"<td>{_e(c)}</td>"
                                    for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Html:
    def __init__(self, markup: str):
        self.markup = markup


def _state(s: str) -> _Html:
    return _Html(f'<span class="state" style="background:{COLORS.get(s, "#555")}">{_e(s)}</span>')


def render(doc: dict, now: datetime | None = None) -> str:
    now = now or parse_instant(doc["collected_at"])
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>pgvault: {_e(doc['cluster'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>pgvault report — cluster {_e(doc['cluster'])}</h1>",
             f"<p>{_state(doc['state']).markup} {_e(doc['summary'])}<br>collected {_e(doc['collected_at'])}</p>",
             "<h2>Recoverability windows</h2>", timeline_svg(doc, now)]
    parts += ["<h2>Jobs</h2>", _table(["state", "job", "site", "last", "age"], [
        [_state(j["state"]), j["name"], j.get("site") or "-", (j.get("last") or {}).get("backup_id", "-"),
         format_duration(j["age_seconds"]) if j.get("age_seconds") is not None else "-"] for j in doc["jobs"]])]
    parts += ["<h2>Sites</h2>", _table(["state", "site", "message"], [
        [_state(i["state"]), i["name"], i["message"]] for i in doc["infrastructure"] if i["kind"] == "site"])]
    parts += ["<h2>Drills</h2>", _table(["state", "drill", "site", "when", "outcome"], [
        [_state(d["state"]), d["name"], d.get("site") or "-", d.get("finished_at") or "-", d.get("outcome", "-")]
        for d in doc["drills"]])]
    parts += ["<h2>Objectives</h2>", _table(["state", "objective", "site", "message"], [
        [_state(o["state"]), o["name"], o.get("site") or "-", o["message"]] for o in doc["objective_checks"]])]
    parts += ['<pre id="layout"></pre>', f"<script>{_SCRIPT}</script></body></html>"]
    return "\n".join(parts)
