"""pgvault status and check against real states of a real cluster and real sites: fresh,
healthy, a job overdue, a site that stops receiving WAL, a gap, an unreachable site, a failed
drill; the Prometheus file parsed back; notifications to a real local webhook and a failing
command. WAL reaches the sites through the real archive_command, `pgvault wal-push %p`."""
from __future__ import annotations

import http.server
import json
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from croniter import croniter
from prometheus_client.parser import text_string_to_metric_families

from pgvault import sandbox
from pgvault.catalog import layout
from tests.conftest import World

def status(w, *args, env=None):
    cp = w.cli("status", "--json", *args, check=False, env=env)
    assert cp.returncode in (0, 1, 2, 3), cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["code"] == cp.returncode
    return cp.returncode, doc


def check(w, env=None):
    cp = w.cli("check", check=False, env=env)
    return cp.returncode, cp.stdout.splitlines()


def one(items, **match):
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, items)
    return found[0]


def enable_archiving(w) -> None:
    """archive_command = pgvault wal-push, to the policy's wal.sites; restart to apply."""
    w.extra["state_dir"] = str(sandbox.owned_dir(w.workdir / "state"))  # wal-push's spool lives there
    w.extra["wal"]["retry_interval"] = "1s"
    policy = w.policy()
    w.pg.configure(archive_mode="on", archive_command=sandbox.pgvault_command(policy) + " wal-push %p")
    w.pg.stop()
    w.pg.start()


def switch_wal(w) -> str:
    """Write a little, close the segment; return the name of the segment just closed."""
    w.pg.psql("CREATE TABLE IF NOT EXISTS churn (x int); INSERT INTO churn SELECT generate_series(1, 100)")
    return w.pg.psql("SELECT pg_walfile_name(pg_switch_wal())").strip()


def wal_file(site: Path, name: str) -> Path | None:
    found = list((site / "clusters/main/wals" / name[:16]).glob(name + "*"))
    return found[0] if found else None


def wal_at(site: Path, name: str) -> bool:
    return wal_file(site, name) is not None


def backup(w, job="nightly") -> str:
    return w.cli("backup", job).stdout.strip().splitlines()[-1]


def put_drill(site_dir: Path, drill_id: str, **doc) -> None:
    """Store drill evidence where the drill runner does (schema in docs/monitoring.md)."""
    path = site_dir / layout.drill_key("main", drill_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)


def drill_doc(drill, outcome, finished: datetime, rto=120.0, rpo=30.0, message=""):
    return {"drill": drill, "site": "a", "started_at": (finished - timedelta(seconds=rto)).isoformat(),
            "finished_at": finished.isoformat(), "outcome": outcome, "rto_seconds": rto, "rpo_seconds": rpo,
            "message": message}


@pytest.fixture
def two_sites(world):
    a, b = world.local_site("a"), world.local_site("b")
    world.jobs["nightly"] = {"method": "logical", "sites": ["a", "b"], "schedule": "0 2 * * *"}
    world.extra["objectives"] = {"rpo": "5m", "rto": "30m"}
    return world, a, b


def test_fresh_cluster(two_sites):
    w, a, b = two_sites
    w.extra["wal"] = {"sites": ["a", "b"]}
    w.policy()
    # WAL sites configured but the cluster does not archive: CRITICAL, with the fix.
    code, doc = status(w)
    assert code == 2
    cluster = one(doc["infrastructure"], kind="cluster")
    assert cluster["state"] == "CRITICAL" and "archive_mode is off" in cluster["message"] and cluster["hint"]

    # Archiving on, nothing taken yet: WARNING everywhere, nothing invented.
    enable_archiving(w)
    code, doc = status(w)
    assert code == 1 and doc["state"] == "WARNING"
    assert {(j["site"], j["state"], j["count"]) for j in doc["jobs"]} == {("a", "WARNING", 0), ("b", "WARNING", 0)}
    assert all(x["state"] == "WARNING" and x["last_segment"] is None for x in doc["wal"])
    assert one(doc["objective_checks"], name="rpo")["state"] == "WARNING"

    code, lines = check(w)
    assert code == 1
    assert lines[0].startswith("PGVAULT WARNING - cluster main:") and "no backup yet" in lines[0]


def test_healthy_after_backup_wal_and_drill(two_sites):
    w, a, b = two_sites
    w.extra["wal"] = {"sites": ["a", "b"]}
    w.policy()
    enable_archiving(w)
    bid = backup(w)
    closed = switch_wal(w)
    sandbox.wait_until(lambda: wal_at(a, closed) and wal_at(b, closed), 60, f"{closed} at both sites")
    put_drill(a, "restore-app-20261125T000000Z", **drill_doc("restore-app", "passed", datetime.now(timezone.utc)))

    prom = w.workdir / "pgvault.prom"
    code, doc = status(w, "--prometheus", str(prom))
    bad = [i["message"] for g in ("infrastructure", "jobs", "wal", "drills", "objective_checks")
           for i in doc[g] if i["state"] != "OK"]
    assert code == 0 and doc["state"] == "OK", bad
    for site in ("a", "b"):
        j = one(doc["jobs"], site=site)
        assert j["last"]["backup_id"] == bid and j["count"] == 1 and j["last"]["size"] > 0
        x = one(doc["wal"], site=site)
        assert x["last_segment"] >= closed and x["gap_count"] == 0 and x["lag_segments"] <= 1
    drill = one(doc["drills"], name="restore-app")
    assert drill["outcome"] == "passed" and drill["rto_seconds"] == 120.0
    assert one(doc["objective_checks"], name="rto")["current_seconds"] == 120.0

    # The textfile parses with Prometheus' own parser and says the same.
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    value = lambda name, **labels: [s.value for s in families[name].samples  # noqa: E731
                                    if all(s.labels.get(k) == v for k, v in labels.items())]
    assert value("pgvault_status") == [0]
    assert value("pgvault_backup_count", job="nightly", site="b") == [1]
    assert value("pgvault_wal_gaps", site="a") == [0]
    assert value("pgvault_drill_success", drill="restore-app") == [1]
    assert value("pgvault_objective_seconds", objective="rpo") == [300]
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in prom.parent.iterdir() if p.name.startswith(".pgvault.prom")], "temp file left behind"

    code, lines = check(w)
    assert code == 0 and lines[0].startswith("PGVAULT OK - cluster main:")
    assert "'wal_lag_a'=" in lines[0]  # Nagios perfdata after the '|'

    # The human table names every site and the newest backup.
    table = w.cli("status", check=False).stdout
    assert table.splitlines()[0].startswith("PGVAULT OK") and bid in table and "WAL" in table


def test_job_overdue_by_the_schedule_and_by_an_absolute_age(two_sites):
    w, a, b = two_sites
    del w.extra["objectives"]  # daily dumps alone could never meet a 5m RPO: judge the schedule only
    w.policy()
    backup(w)
    code, doc = status(w)
    assert code == 0
    started = datetime.fromisoformat(one(doc["jobs"], site="a")["last"]["started_at"])
    first_fire = croniter("0 2 * * *", started).get_next(datetime)

    at = lambda t: {"PGVAULT_NOW": t.isoformat()}  # noqa: E731
    # One scheduled run missed (fired, and the 1h grace for it to finish has passed).
    code, doc = status(w, env=at(first_fire + timedelta(hours=2)))
    assert code == 1
    assert [(j["state"], j["missed_runs"]) for j in doc["jobs"]] == [("WARNING", 1), ("WARNING", 1)]
    # Still inside the grace period: not missed yet.
    code, doc = status(w, env=at(first_fire + timedelta(minutes=30)))
    assert code == 0
    # Two missed: CRITICAL, for status and for check.
    code, doc = status(w, env=at(first_fire + timedelta(days=1, hours=2)))
    assert code == 2 and {j["state"] for j in doc["jobs"]} == {"CRITICAL"}
    assert "2 scheduled runs missed" in doc["summary"]

    # The policy overrides the schedule-derived threshold with an absolute age.
    w.extra["monitoring"] = {"jobs": {"nightly": {"crit_age": "1h"}}}
    w.policy()
    code, doc = status(w, env=at(started + timedelta(hours=2)))
    assert code == 2 and "older than 1h" in one(doc["jobs"], site="a")["message"]


def test_site_that_stops_receiving_wal_lags_and_goes_critical(two_sites):
    w, a, b = two_sites
    w.extra["wal"] = {"sites": ["a", "b"]}
    w.extra["monitoring"] = {"wal_crit_segments": 3}
    w.policy()
    enable_archiving(w)
    closed = switch_wal(w)
    sandbox.wait_until(lambda: wal_at(a, closed) and wal_at(b, closed), 60, f"{closed} at both sites")
    code, doc = status(w)
    lags = {x["site"]: x["lag_segments"] for x in doc["wal"]}
    assert max(lags.values()) <= 1, lags

    os.chmod(b, 0o000)  # site b stops accepting writes from wal-push (run by postgres)
    try:
        for _ in range(4):
            closed = switch_wal(w)
        sandbox.wait_until(lambda: wal_at(a, closed), 60, f"{closed} at site a")
        code, doc = status(w)
    finally:
        os.chmod(b, 0o700)
    wa, wb = one(doc["wal"], site="a"), one(doc["wal"], site="b")
    assert wa["state"] == "OK" and wa["lag_segments"] <= 1
    assert wb["state"] == "CRITICAL" and wb["lag_segments"] >= 4 and wb["lag_seconds"] >= wa["lag_seconds"]
    assert wb["last_segment"] < wa["last_segment"]
    assert wb["spooled"] >= 4 and "spooled for it" in wb["message"]  # wal-push kept b's backlog
    assert wb["failing"] and "wal-push failing since" in wb["message"]
    assert code == 2 and "wal at b" in doc["summary"]
    prom = w.workdir / "pgvault.prom"
    w.cli("status", "--prometheus", str(prom), check=False)
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert {s.labels["site"]: s.value for s in families["pgvault_wal_lag_segments"].samples}["b"] >= 4

    # A segment lost at site a is a gap: PITR through it is impossible.
    lost = wa["last_segment"][:16] + "%08X" % (int(wa["last_segment"][16:], 16) - 2)
    wal_file(a, lost).unlink()
    code, doc = status(w)
    wa = one(doc["wal"], site="a")
    assert code == 2 and wa["state"] == "CRITICAL" and wa["gaps"] == [lost] and wa["gap_count"] == 1
    assert "missing segment" in wa["message"]


def test_unreachable_site_is_critical(s3world):
    w = s3world
    w.local_site("a")
    w.s3_site("remote")
    w.sites["remote"].update({"connect_timeout": 1, "read_timeout": 1, "max_attempts": 1})
    w.jobs["nightly"] = {"method": "logical", "sites": ["a", "remote"], "schedule": "0 2 * * *"}
    w.policy()
    backup(w)
    assert status(w)[0] == 0
    w.moto.pause()
    try:
        code, doc = status(w)
    finally:
        w.moto.resume()
    assert code == 2
    assert one(doc["infrastructure"], kind="site", name="remote")["state"] == "CRITICAL"
    assert one(doc["jobs"], site="remote")["state"] == "UNKNOWN"
    assert one(doc["jobs"], site="a")["state"] == "OK"  # the other site is still read
    assert doc["facts"]["sites"]["remote"]["reachable"] is False


class Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Hook.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_failed_drill_is_critical_and_notified_once_to_the_webhook(two_sites, webhook):
    w, a, b = two_sites
    w.extra["notify"] = {"webhook": {"url": webhook + "/hook/${PGVAULT_HOOK_PATH}",
                                     "headers": {"Authorization": "Bearer ${PGVAULT_WEBHOOK_TOKEN}"}}}
    w.policy()
    backup(w)
    now = datetime.now(timezone.utc)
    put_drill(a, "restore-app-1", **drill_doc("restore-app", "passed", now - timedelta(days=1)))
    put_drill(a, "restore-app-2", **drill_doc("restore-app", "failed", now - timedelta(minutes=5),
                                              message="row count of public.orders differs"))
    (a / layout.drill_key("main", "garbage")).write_text("{not json")  # read defensively

    env = {"PGVAULT_WEBHOOK_TOKEN": "tok-3am-s3cr3t", "PGVAULT_HOOK_PATH": "pgvault",
           "PGVAULT_STATE_DIR": str(w.workdir / "state")}
    cp = w.cli("status", "--json", "--notify", check=False, env=env)
    doc = json.loads(cp.stdout)
    assert cp.returncode == 2
    d = one(doc["drills"], name="restore-app")
    assert d["state"] == "CRITICAL" and d["outcome"] == "failed" and "row count" in d["message"]
    assert [e.split(":")[0] for e in doc["notified"]] == ["objective_broken"]
    sandbox.wait_until(lambda: Hook.received, 10, "the webhook call")
    (call,) = Hook.received
    assert call["path"] == "/hook/pgvault" and call["auth"] == "Bearer tok-3am-s3cr3t"
    assert call["body"]["event"] == "objective_broken" and call["body"]["cluster"] == "main"
    assert call["body"]["item"]["kind"] == "drill" and call["body"]["item"]["outcome"] == "failed"
    assert "tok-3am-s3cr3t" not in cp.stderr + cp.stdout

    # The same broken state is not sent again; check reports it with the same exit code.
    cp = w.cli("status", "--json", "--notify", check=False, env=env)
    assert json.loads(cp.stdout)["notified"] == [] and len(Hook.received) == 1
    code, lines = check(w, env=env)
    assert code == 2 and lines[0].startswith("PGVAULT CRITICAL") and "drill restore-app from a: failed" in lines[0]


def test_notify_failures_are_logged_never_fatal(two_sites, webhook):
    w, a, b = two_sites
    out = w.workdir / "payload.json"
    w.extra["notify"] = {"command": ["sh", "-c", f"cat > {out}; echo paging system down >&2; exit 3"],
                         "webhook": {"url": "http://127.0.0.1:9/unreachable",
                                     "headers": {"X-Api-Key": "${PGVAULT_MISSING_TOKEN}"}}}
    w.policy()
    put_drill(a, "restore-app-1", **drill_doc("restore-app", "failed", datetime.now(timezone.utc), message="boom"))
    cp = w.cli("status", "--notify", check=False, env={"PGVAULT_STATE_DIR": str(w.workdir / "state")})
    assert cp.returncode == 2  # the drill's state, not a notify failure
    assert cp.stdout.startswith("PGVAULT CRITICAL")
    payload = json.loads(out.read_text())
    assert payload["event"] == "objective_broken" and payload["item"]["name"] == "restore-app"
    assert "notify command" in cp.stderr and "exited with code 3" in cp.stderr and "paging system down" in cp.stderr
    assert "PGVAULT_MISSING_TOKEN is not set" in cp.stderr
    assert "Traceback" not in cp.stderr


def test_bad_monitoring_and_notify_sections_are_policy_errors(workdir):
    w = World(workdir, instance=None)  # no cluster needed: the policy is refused before any I/O
    (workdir / "policy.yaml").write_text(yaml.safe_dump({
        "version": 1, "cluster": {"name": "main", "conninfo": "host=/nonexistent"},
        "sites": {"a": {"type": "local", "path": str(workdir / "a")}},
        "monitoring": {"missed_warn": 0, "bogus": 1},
        "notify": {"webhook": {"url": "https://hooks.example/x", "headers": {"Authorization": "Bearer abc"}}}}))
    cp = w.cli("status", check=False)
    assert cp.returncode == 2 and "Traceback" not in cp.stderr
    assert "monitoring.missed_warn" in cp.stderr and "monitoring.bogus: unknown key" in cp.stderr
    assert "notify.webhook.headers" in cp.stderr and "environment" in cp.stderr
