"""Progress lines: plain with ETA when the total is known, JSON under --log-format json."""
from __future__ import annotations

import io
import json
import logging

from pgvault.cli import setup_logging
from pgvault.cli.progress import Progress


def test_plain_lines_carry_rate_percent_and_eta():
    out = io.StringIO()
    p = Progress("restore 2026", total=4 << 20, interval=0, stream=out, as_json=False)
    p("app", 1 << 20)
    p("globals", 1 << 20)  # figures are summed over labels
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "2.0 MiB" in lines[1] and "of 4.0 MiB, 50%" in lines[1] and "ETA" in lines[1]


def test_json_lines_when_the_root_asked_for_json_logs():
    logger = logging.getLogger("pgvault")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    setup_logging(0, "json")
    try:
        out = io.StringIO()  # not a TTY
        p = Progress("backup nightly", total=1000, interval=0, stream=out)
        p("app", 250)
        p.close()
        docs = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [d["final"] for d in docs] == [False, True]
        assert docs[0]["event"] == "progress" and docs[0]["bytes"] == 250 and docs[0]["total"] == 1000
        assert docs[0]["percent"] == 25.0 and docs[0]["eta_seconds"] is not None and docs[0]["logger"] == "pgvault.progress"
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved  # other tests rely on caplog


def test_short_operations_print_nothing_when_not_a_tty():
    out = io.StringIO()
    p = Progress("backup nightly", stream=out, as_json=False)  # default interval 10s
    p("app", 100)
    p.close()
    assert out.getvalue() == ""
