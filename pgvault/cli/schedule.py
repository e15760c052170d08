"""pgvault schedule install | show: run tick from systemd or cron; list upcoming runs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import load
from .output import table


def _tick_argv(policy_file: str) -> list[str]:
    return [sys.executable, "-m", "pgvault", "--policy", policy_file, "tick"]


def systemd_units(name: str, argv: list[str]) -> dict[str, str]:
    """The service and timer files (pure).

    >>> sorted(systemd_units("pgvault-main", ["/usr/bin/pgvault", "tick"]))
    ['pgvault-main.service', 'pgvault-main.timer']
    """
    from ..proc import quote

    service = f"""[Unit]
Description=pgvault tick ({name}): run the backup jobs that are due
After=network-online.target postgresql.service
Wants=network-online.target

[Service]
Type=oneshot
# Which user runs what (README "Users"): tick and its jobs run as root (snapshots, restores and
# chown need it); archive_command runs as postgres. The state dir and WAL spool are postgres's:
# root creates them for postgres, and `pgvault check` reports one postgres cannot write.
User=root
# tick starts each due job in its own detached process and returns, so the timer can start the
# next tick while a slow job runs (systemd never starts a unit that is still active).
# KillMode=process lets those jobs outlive this tick.
ExecStart={quote(argv + ['--no-wait'])}
KillMode=process
Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7
"""
    timer = f"""[Unit]
Description=pgvault tick every minute ({name})

[Timer]
OnCalendar=minutely
# A tick missed while the host was down runs at boot; tick itself runs a missed window once.
Persistent=true
AccuracySec=1s

[Install]
WantedBy=timers.target
"""
    return {f"{name}.service": service, f"{name}.timer": timer}


def cron_line(argv: list[str], user: str = "root") -> str:
    """The /etc/cron.d line (pure).

    >>> cron_line(["/usr/bin/pgvault", "tick"])
    '* * * * * root /usr/bin/pgvault tick >>/var/log/pgvault-tick.log 2>&1'
    """
    from ..proc import quote

    return f"* * * * * {user} {quote(argv)} >>/var/log/pgvault-tick.log 2>&1"


@click.group()
def schedule():
    """Install the every-minute tick (systemd or cron) and show upcoming runs."""


@schedule.command()
@click.option("--systemd", "kind", flag_value="systemd", help="write a systemd service and timer")
@click.option("--cron", "kind", flag_value="cron", help="print the crontab line")
@click.option("--dir", "unit_dir", default="/etc/systemd/system", show_default=True, help="where unit files go")
@click.option("--install", "install_cron", is_flag=True, help="with --cron: write /etc/cron.d/pgvault-<cluster>")
@click.option("--cron-dir", default="/etc/cron.d", hidden=True)
@click.pass_context
def install(ctx, kind, unit_dir, install_cron, cron_dir):
    """Make the system run `pgvault tick` every minute."""
    from ..errors import UsageError

    policy = load(ctx)
    src = getattr(policy, "_source", None)
    policy_file = str(Path(src).resolve()) if src else "/etc/pgvault/policy.yaml"
    name = f"pgvault-{policy.cluster.name}"
    argv = _tick_argv(policy_file)
    if kind is None:
        raise UsageError("say how tick should be run", "pass --systemd or --cron")
    if kind == "systemd":
        d = Path(unit_dir)
        d.mkdir(parents=True, exist_ok=True)
        for fn, text in systemd_units(name, argv).items():
            (d / fn).write_text(text)
            os.chmod(d / fn, 0o644)
            click.echo(f"wrote {d / fn}")
        click.echo(f"enable with: systemctl daemon-reload && systemctl enable --now {name}.timer")
        return 0
    line = cron_line(argv)
    if install_cron:
        path = Path(cron_dir) / name
        path.write_text(f"# pgvault tick for cluster {policy.cluster.name}. It runs as root; archive_command runs\n"
                        f"# as postgres, which owns the state dir and WAL spool (README \"Users\").\n{line}\n")
        os.chmod(path, 0o644)
        click.echo(f"wrote {path}")
    else:
        click.echo(line)
    return 0


@schedule.command()
@click.option("--count", default=3, show_default=True, help="upcoming runs per job")
@click.pass_context
def show(ctx, count):
    """Every job with its next run times: in UTC, in the job's schedule_tz and in host local time."""
    from ..tick.engine import Clock, open_store
    from ..policy.schedule import slots_between

    policy = load(ctx)
    store = open_store(policy)
    now = Clock.from_env().now()
    rows = []
    for name, job in policy.jobs.items():
        st = store.load(name)
        last = st.last.started_at.strftime("%Y-%m-%d %H:%MZ") if st and st.last else "never"
        if not job.schedule:
            rows.append([name, "manual", "-", "-", "-", last])
            continue
        from datetime import timedelta

        nexts = slots_between(job.schedule, job.schedule_tz, now, now + timedelta(days=800), limit=count)
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(job.schedule_tz)
        for i, t in enumerate(nexts):
            rows.append([name if i == 0 else "", f"{job.schedule} ({job.schedule_tz})" if i == 0 else "",
                         t.strftime("%Y-%m-%d %H:%M UTC"), t.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),
                         t.astimezone().strftime("%Y-%m-%d %H:%M %Z"), last if i == 0 else ""])
    headers = ["JOB", "SCHEDULE", "NEXT (UTC)", "NEXT (SCHEDULE TZ)", "NEXT (HOST LOCAL)", "LAST RUN"]
    click.echo(table(rows, headers) if rows else "no jobs")
    return 0
