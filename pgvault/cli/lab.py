"""pgvault lab run [SCENARIO...] / pgvault lab soak: replay disasters in a sandbox (docs/lab.md)."""
from __future__ import annotations

import click


def _root_only():
    import os

    from ..errors import UsageError

    if os.geteuid() != 0:
        raise UsageError("the lab runs PostgreSQL as the 'postgres' user and mounts a loop file system: it needs root",
                         "run it as root")


@click.group()
def lab():
    """Replay real disasters on a sandbox cluster; every backup must verify and restore."""


@lab.command("run")
@click.argument("scenarios", nargs=-1, metavar="[SCENARIO...]")
@click.option("--report-dir", type=click.Path(file_okay=False), default="lab-report", show_default=True,
              help="where junit.xml, lab.json and lab.html go")
@click.option("--quick", is_flag=True, help="a few representative scenarios (what CI runs)")
@click.option("--samples", type=click.IntRange(1, 20), default=None, help="restore points checked after each scenario")
@click.option("--list", "list_only", is_flag=True, help="list the scenarios and exit")
def run_cmd(scenarios, report_dir, quick, samples, list_only):
    """Build the lab, replay SCENARIO... (default: all; --quick: a subset), write reports."""
    from ..sandbox.lab.scenarios import QUICK, SCENARIOS

    if list_only:
        for s in SCENARIOS.values():
            click.echo(f"{s.name:18} {s.title}" + ("" if s.available else f"  [not available: {s.why_not}]")
                       + ("  (quick)" if s.name in QUICK else ""))
        return 0
    _root_only()
    from pathlib import Path

    from ..sandbox.lab.run import run

    return run(list(scenarios), report_dir=Path(report_dir).resolve(), quick=quick, say=click.echo,
               samples=samples)


@lab.command("soak")
@click.option("--minutes", type=click.FloatRange(0.5, 24 * 60), required=True, help="how long to draw faults for")
@click.option("--seed", type=int, default=None, help="the schedule's seed (printed first; default: random)")
@click.option("--report-dir", type=click.Path(file_okay=False), default="lab-soak-report", show_default=True)
def soak_cmd(minutes, seed, report_dir):
    """A seeded, replayable random schedule of the lab's faults for N minutes, then the host lost."""
    _root_only()
    import random
    from pathlib import Path

    from ..sandbox.lab.run import run

    seed = seed if seed is not None else random.SystemRandom().randrange(1, 1 << 31)
    return run(None, report_dir=Path(report_dir).resolve(), say=click.echo, soak_minutes=minutes, seed=seed)
