"""pgvault windows over real archives: PostgreSQL 15 archiving through `pgvault wal-push` to a
local site and an S3 site (moto_server), two Barman bases; the window when the archive is
continuous, a hole exactly where a segment is removed, a base whose WAL was expired, and
`--at` inside, at the edges and outside. Damage is done to the local site's files and undone
after each test (the scene is shared)."""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta

import pytest

from pgvault import pg, sandbox
from pgvault.catalog import layout
from pgvault.wal import names
from tests.conftest import World, archiving_world
from tests.integration.test_pitr import archived, switch_and_wait


def windows(w: World, *args, check=True) -> dict:
    cp = w.cli("windows", "--json", *args, check=check)
    return json.loads(cp.stdout)


def site(doc: dict, name: str) -> dict:
    (s,) = [s for s in doc["sites"] if s["site"] == name]
    return s


def intervals(s: dict) -> list[dict]:
    return [i for t in s["timelines"] for i in t["intervals"]]


WAL_SITES = ["a", "eu", "late"]


@pytest.fixture(scope="module")
def scene(moto):
    """Sites a (local), eu and late (S3): bases b1 and b2 at all three; site late was
    out of wal.sites while between[1] was archived, so it never got that segment. (The drills
    shown on windows are tested where drills run: tests/integration/test_drills.py.)"""
    workdir = sandbox.workdir("pgvault-windows-")
    w = archiving_world(workdir, moto)
    inst = w.pg
    w.s3_site("late", "us-west-2")
    w.state = sandbox.owned_dir(workdir / "state")
    w.jobs["base"] = {"method": "barman", "sites": WAL_SITES, "compression": "lz4"}
    w.extra.update(wal={"sites": WAL_SITES, "retry_interval": "1s"}, state_dir=str(w.state))
    w.policy()
    inst.start()
    inst.psql("CREATE TABLE t (id int)")
    switch_and_wait(w, inst, WAL_SITES)
    w.b1 = w.cli("backup", "base").stdout.strip().splitlines()[-1]
    w.between = []
    for i in range(3):
        inst.psql(f"INSERT INTO t VALUES ({i})")
        if i == 1:                                   # late leaves wal.sites for one segment: never sent there
            w.extra["wal"]["sites"] = ["a", "eu"]
            w.policy()
            w.between.append(switch_and_wait(w, inst, ["a", "eu"]))
            w.extra["wal"]["sites"] = WAL_SITES
            w.policy()
        else:
            w.between.append(switch_and_wait(w, inst, WAL_SITES))
    w.b2 = w.cli("backup", "base").stdout.strip().splitlines()[-1]
    inst.psql("INSERT INTO t VALUES (99)")
    w.last_commit = datetime.fromisoformat(inst.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US+00:00')").strip())
    switch_and_wait(w, inst, WAL_SITES)
    yield w
    inst.stop("immediate")
    shutil.rmtree(workdir, ignore_errors=True)


class Hidden:
    """Move WAL files of the local site aside for one test, and back."""

    def __init__(self, w: World, segs):
        self.paths = []
        root = w.workdir / "site-a"
        for seg in segs:
            (p,) = [q for q in (root / layout.wal_key("main", seg)).parent.glob(seg + "*")
                    if names.split_stored(q.name)[0] == seg]
            self.paths.append(p)

    def __enter__(self):
        for p in self.paths:
            p.rename(p.with_name("." + p.name + ".hidden"))
        return self

    def __exit__(self, *exc):
        for p in self.paths:
            p.with_name("." + p.name + ".hidden").rename(p)


def test_continuous_archive_one_interval_per_site_from_the_oldest_base(scene):
    w = scene
    doc = windows(w)
    for name in ("a", "eu"):
        s = site(doc, name)
        (iv,) = intervals(s)
        assert iv["base"]["backup_id"] == w.b1 and iv["bases"] == [w.b1, w.b2]
        assert s["holes"] == 0 and s["unusable_bases"] == []
        # The end is the last commit read from the newest segment (not the time it was stored).
        assert iv["end_time_kind"] == "commit"
        end = datetime.fromisoformat(iv["end_time"])
        assert abs((end - w.last_commit).total_seconds()) < 1, (end, w.last_commit)
    text = w.cli("windows").stdout
    assert "site a: unbroken window" in text and "site eu: unbroken window" in text and w.b1 in text


def test_a_deleted_segment_makes_a_hole_exactly_there(scene):
    w = scene
    gone = w.between[1]
    with Hidden(w, [gone]):
        doc = windows(w)
        a = site(doc, "a")
        (h,) = [h for t in a["timelines"] for h in t["holes"]]
        assert h["missing"] == [[gone, gone]] and h["cause"] == "missing-wal"
        tli, segno = names.parse_segment(gone)
        assert h["start_lsn"] == pg_lsn(segno * 16 * 2 ** 20)
        first, second = intervals(a)
        assert first["base"]["backup_id"] == w.b1 and second["base"]["backup_id"] == w.b2
        assert site(doc, "eu")["holes"] == 0            # the other site still has it
        # A time inside the hole is not restorable at a, but is at eu.
        mid = datetime.fromisoformat(h["start_time"]) + (datetime.fromisoformat(h["end_time"]) -
                                                          datetime.fromisoformat(h["start_time"])) / 2
        cp = w.cli("windows", "--json", "--at", mid.isoformat(), check=False)
        ans = {s["site"]: s for s in json.loads(cp.stdout)["sites"]}
        assert cp.returncode == 0 and ans["eu"]["restorable"] and not ans["a"]["restorable"]
        assert gone in ans["a"]["reason"]


def test_a_base_whose_wal_was_expired(scene):
    w = scene
    # Expiry removed everything up to the first segment written after b1: b1 cannot be made consistent.
    older = sorted(n for n in archived(w, "a") if names.kind(n) == "segment" and n <= w.between[0])
    with Hidden(w, older):
        a = site(windows(w), "a")
        (iv,) = intervals(a)
        assert iv["base"]["backup_id"] == w.b2
        assert [u["backup_id"] for u in a["unusable_bases"]] == [w.b1]
        assert "not archived here" in a["unusable_bases"][0]["reason"]


def test_at_inside_at_the_edges_and_outside(scene):
    w = scene
    (iv,) = intervals(site(windows(w), "a"))
    start, end = datetime.fromisoformat(iv["start_time"]), datetime.fromisoformat(iv["end_time"])
    for t in (start, start + (end - start) / 2, end):
        cp = w.cli("windows", "--json", "--site", "a", "--at", t.isoformat())
        (ans,) = json.loads(cp.stdout)["sites"]
        assert ans["restorable"] and ans["base"]["backup_id"] in (w.b1, w.b2) and ans["wal_segments"] >= 1
    (ans,) = json.loads(w.cli("windows", "--json", "--site", "a", "--at", end.isoformat()).stdout)["sites"]
    assert ans["base"]["backup_id"] == w.b2
    for t, why in ((start - timedelta(seconds=1), "before the window"), (end + timedelta(seconds=1), "after the window")):
        cp = w.cli("windows", "--json", "--site", "a", "--at", t.isoformat(), check=False)
        (ans,) = json.loads(cp.stdout)["sites"]
        assert cp.returncode == 1 and not ans["restorable"] and why in ans["reason"]
    text = w.cli("windows", "--site", "a", "--at", (end + timedelta(seconds=1)).isoformat(), check=False).stdout
    assert "a: NOT restorable: after the window" in text


def test_a_site_that_never_got_some_wal(scene):
    """Site late was out of wal.sites while between[1] was archived: a hole exactly there at
    late only; --at and restore --to-time --plan answer per site (inside the hole, at its edges)."""
    w = scene
    gone = w.between[1]
    doc = windows(w)
    late = site(doc, "late")
    (h,) = [h for t in late["timelines"] for h in t["holes"]]
    assert h["missing"] == [[gone, gone]] and h["cause"] == "missing-wal" and gone in h["detail"]
    assert site(doc, "a")["holes"] == 0 and site(doc, "eu")["holes"] == 0
    first, second = intervals(late)
    assert (first["base"]["backup_id"], second["base"]["backup_id"]) == (w.b1, w.b2)
    assert first["end_time"] == h["start_time"] and second["start_time"] == h["end_time"]
    text = w.cli("windows", "--site", "late").stdout
    assert "HOLE" in text and gone in text and "1 hole(s)" in text

    hs, he = datetime.fromisoformat(h["start_time"]), datetime.fromisoformat(h["end_time"])
    mid = hs + (he - hs) / 2
    ans = {s["site"]: s for s in windows(w, "--at", mid.isoformat())["sites"]}
    assert not ans["late"]["restorable"] and "in a hole" in ans["late"]["reason"] and gone in ans["late"]["reason"]
    assert ans["a"]["restorable"] and ans["eu"]["restorable"]
    # The hole's edges are restorable at late: its start from b1, its end (b2 consistent) from b2.
    for t, bid in ((hs, w.b1), (he, w.b2)):
        (edge,) = windows(w, "--site", "late", "--at", t.isoformat())["sites"]
        assert edge["restorable"] and edge["base"]["backup_id"] == bid, (t, edge)

    # restore --to-time --plan: the plan (from a or eu), and the same per-site answer, nothing written.
    dest = w.workdir / "plan-only"
    cp = w.cli("restore", "--to-time", mid.isoformat(), "--plan", "--target-dir", str(dest))
    assert "per site (restorable from here?):" in cp.stdout and "plan only: nothing was changed" in cp.stdout
    assert "  late: NOT restorable: in a hole" in cp.stdout
    assert f"  a: restorable from barman base {ans['a']['base']['backup_id']}" in cp.stdout
    planned = json.loads(w.cli("restore", "--to-time", mid.isoformat(), "--plan", "--json").stdout)
    assert {s["site"]: s["restorable"] for s in planned["sites"]} == {"a": True, "eu": True, "late": False}
    assert [s for s in planned["sites"] if s["site"] == "a"] == [ans["a"]]   # one function, one answer
    assert not dest.exists()
    # A refused plan (before every base) still says, per site, why not.
    early = min(datetime.fromisoformat(i["start_time"]) for n in WAL_SITES for i in intervals(site(doc, n))) \
        - timedelta(seconds=5)
    cp = w.cli("restore", "--to-time", early.isoformat(), "--plan", check=False)
    assert cp.returncode == 2 and "before the oldest base backup" in cp.stderr
    assert cp.stdout.count("NOT restorable: before the window") == 3, cp.stdout


def test_bad_input(scene):
    cp = scene.cli("windows", "--at", "yesterday-ish", check=False)
    assert cp.returncode == 2 and "cannot read" in cp.stderr
    cp = scene.cli("windows", "--site", "nowhere", check=False)
    assert cp.returncode == 2 and "no site 'nowhere'" in cp.stderr


def test_status_against_the_promised_window_and_the_metrics(scene):
    from prometheus_client.parser import text_string_to_metric_families

    w = scene
    doc = windows(w)
    prom = w.workdir / "windows.prom"
    try:
        w.extra["objectives"] = {"window": "14d"}
        w.policy()
        cp = w.cli("status", "--json", "--prometheus", str(prom), check=False)
        st = json.loads(cp.stdout)
        items = {i["site"]: i for i in st["objective_checks"] if i["kind"] == "window"}
        assert cp.returncode == 2 and set(items) == set(WAL_SITES)
        assert all(i["state"] == "CRITICAL" and "shorter than the promised 14d" in i["message"] for i in items.values())
        fams = {f.name: f for f in text_string_to_metric_families(prom.read_text())}

        def value(name, **labels):
            return [s.value for s in fams[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]

        for name in ("a", "eu"):
            (iv,) = intervals(site(doc, name))
            assert value("pgvault_recovery_window_start_seconds", site=name, timeline="1") == \
                [datetime.fromisoformat(iv["start_time"]).timestamp()]
            assert value("pgvault_recovery_window_end_seconds", site=name, timeline="1") == \
                [datetime.fromisoformat(iv["end_time"]).timestamp()]
            assert value("pgvault_recovery_window_holes", site=name) == [0]
        assert value("pgvault_item_state", kind="window", site="a") == [2]
        table = w.cli("status", check=False).stdout
        assert "RECOVERY WINDOW" in table and "shorter than the promised 14d" in table

        # A promise the archive keeps: OK; a hole at one site shows in its hole count.
        w.extra["objectives"] = {"window": "1s"}
        w.policy()
        with Hidden(w, [w.between[1]]):
            cp = w.cli("status", "--json", "--prometheus", str(prom), check=False)
            items = {i["site"]: i for i in json.loads(cp.stdout)["objective_checks"] if i["kind"] == "window"}
            assert items["eu"]["state"] == "OK" and items["a"]["holes"] == 1
            fams = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
            assert value("pgvault_recovery_window_holes", site="a") == [1]
            assert value("pgvault_recovery_window_holes", site="eu") == [0]
    finally:
        w.extra.pop("objectives", None)
        w.policy()


def pg_lsn(n: int) -> str:
    from pgvault.lsn import format_lsn

    return format_lsn(n)


def chromium(w: World, *args) -> str:
    """Debian's chromium, headless (installed by scripts/setup.sh), its profile in the scene's
    workdir (removed with it); stdout."""
    import subprocess

    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: run scripts/setup.sh (it installs Debian's chromium)")
    cp = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         f"--user-data-dir={w.workdir / 'chromium-profile'}", *args], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-2000:]
    return cp.stdout


def test_html_report_drawn_in_chromium(scene):
    """The page renders in a real browser: one bar per interval, one red mark per hole, in time
    order and where their times say; a screenshot is kept beside the report."""
    import re

    w = scene
    out = w.workdir / "report"
    out.mkdir(exist_ok=True)
    page = out / "report.html"
    with Hidden(w, [w.between[1]]):
        doc = windows(w)
        cp = w.cli("report", "--html", str(page), check=False)
        assert cp.returncode in (0, 1, 2), cp.stderr
    text = page.read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), "the page must not load anything"
    dom = chromium(w, "--dump-dom", page.as_uri())
    m = re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S)
    drawn = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    for name in WAL_SITES:                               # a: hidden segment; late: never got one
        s = site(doc, name)
        bars = [d for d in drawn if d["site"] == name and d["cls"] == "mark interval"]
        holes = [d for d in drawn if d["site"] == name and d["cls"] == "mark hole"]
        assert len(bars) == len(intervals(s)) and len(holes) == s["holes"], (name, bars, holes)
        assert [b["x"] for b in bars] == sorted(b["x"] for b in bars)
        assert all(b["w"] > 0 and b["h"] > 0 for b in bars + holes)
        if holes:                                        # site a: the hole lies between its two bars
            (h,) = holes
            # By its centre: a short hole is drawn at least a few pixels wide, so its edges may
            # overlap the bars beside it by a fraction of that width (it happened in CI).
            centre = h["x"] + h["w"] / 2
            assert bars[0]["x"] + bars[0]["w"] - 1 <= centre <= bars[1]["x"] + 1, (bars, h)
            assert bars[0]["x"] < h["x"] < bars[1]["x"]
    assert len([d for d in drawn if d["site"] == "a" and d["cls"] == "mark hole"]) == 1
    shot = out / "report.png"
    chromium(w, f"--screenshot={shot}", "--window-size=1100,900", page.as_uri())
    assert shot.stat().st_size > 1000 and shot.read_bytes()[:4] == b"\x89PNG"
    keep = os.environ.get("PGVAULT_TEST_REPORTS")
    if keep:                                             # CI: publish the page and its screenshot
        for f in (page, shot):
            shutil.copy(f, keep)


def test_all_clusters_at_one_site(scene):
    """A second cluster stored at site a (its catalog and WAL copied, one segment left out):
    --all-clusters lists both, each with its own window, from the site alone."""
    w = scene
    src, dst = w.workdir / "site-a/clusters/main", w.workdir / "site-a/clusters/other"
    try:
        dst.mkdir()
        for part in ("cluster.json", "backups", "wals"):
            (shutil.copytree if (src / part).is_dir() else shutil.copy2)(src / part, dst / part)
        gone = w.between[1]
        for f in (dst / "wals" / gone[:16]).glob(gone + "*"):
            if names.split_stored(f.name)[0] == gone:
                f.unlink()
        doc = json.loads(w.cli("windows", "--site", "a", "--all-clusters", "--json").stdout)
        by = {c["cluster"]: c for c in doc["clusters"]}
        assert set(by) == {"main", "other"} and doc["site"] == "a"
        assert by["main"]["holes"] == 0 and by["other"]["holes"] == 1
        assert [i["base"]["backup_id"] for i in intervals(by["other"])] == [w.b1, w.b2]
        text = w.cli("windows", "--site", "a", "--all-clusters").stdout
        assert "2 cluster(s)" in text and "other" in text
        cp = w.cli("windows", "--all-clusters", check=False)
        assert cp.returncode == 2 and "--site" in cp.stderr
    finally:
        shutil.rmtree(dst, ignore_errors=True)


def quarantined(w, name: str) -> list[dict]:
    from pgvault.policy import load_policy
    from pgvault.sites import open_site
    from pgvault.wal.divergence import read_evidence

    pol = load_policy(str(w.workdir / "policy.yaml"))
    return read_evidence(open_site(name, pol.sites[name]), "main")


def test_two_timelines_after_a_promotion(scene):
    """Last in the module (it adds a timeline for good): restore the newest point, let the
    restored cluster promote and archive (timeline 2) while the old primary goes on writing
    timeline 1 — a fork, and a zombie: its WAL past the fork is quarantined, so timeline 1 ends
    at the switch; timeline 2 starts there."""
    from pgvault import pg as pgmod
    from pgvault.lsn import parse_lsn

    w = scene
    dest, port = w.workdir / "tl2", pgmod.free_port()
    w.cli("restore", "--latest", "--from-site", "a", "--target-dir", str(dest), "--port", str(port))
    inst = pgmod.Instance(dest, port, socket_dir=dest)
    inst.configure(archive_mode=True, archive_command=sandbox.pgvault_command(w.workdir / "policy.yaml") + " wal-push %p")
    try:
        inst.start(timeout=300)
        sandbox.wait_until(lambda: inst.psql("SELECT pg_is_in_recovery()").strip() == "f", 120, "promotion")
        sandbox.wait_until(lambda: "00000002.history" in archived(w, "a") and "00000002.history" in archived(w, "eu"),
                           60, "history file archived")
        inst.psql("INSERT INTO t VALUES (200)")
        switch_and_wait(w, inst)
    finally:
        inst.stop("fast")
    # The old primary goes on writing timeline 1 past the fork (a zombie): wal-push keeps those
    # segments out of the archive recovery reads, in quarantine/ with evidence (docs/ha.md).
    w.pg.psql("INSERT INTO t VALUES (100)")
    zombie = w.pg.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()
    for name in ("a", "eu"):
        sandbox.wait_until(lambda: any(d["name"] == zombie and d["reason"] == "divergent"
                                       for d in quarantined(w, name)), 90, f"{zombie} quarantined at {name}")
        assert zombie not in archived(w, name)
    for name in ("a", "eu"):
        s = site(windows(w), name)
        t1, t2 = s["timelines"]
        assert (t1["timeline"], t2["timeline"], t2["parent"]) == (1, 2, 1)
        switch = t2["switch_lsn"]
        assert t1["forks"] == [{"timeline": 2, "lsn": switch}]
        assert [i["start_kind"] for i in t1["intervals"]] == ["base"]   # nothing of timeline 1 past the fork
        assert t1["intervals"][0]["end_lsn"] == switch
        (iv2,) = t2["intervals"]
        assert iv2["start_kind"] == "switch" and iv2["start_lsn"] == switch and iv2["bases"] == [w.b1, w.b2]
        assert parse_lsn(iv2["end_lsn"]) > parse_lsn(switch) and s["holes"] == 0
    text = w.cli("windows", "--site", "a").stdout
    assert "fork" in text and "timeline 2 branches here" in text
