"""Drill files -> Drill models, cross-checked against the policy; every problem at once.

Drill files are found with the policy's ``drills:`` globs, relative to the policy file. A
problem is reported as ``<file>: <dotted path>: <message>`` and the whole set exits 2, like a
bad policy."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import PolicyError, UsageError
from ..policy.load import translate_error
from .model import EACH, Drill, pitr_methods

Problem = tuple[str, str, str | None]


class DrillDefinitionError(PolicyError):
    """Invalid drill files; ``problems`` holds (file: dotted path, message, hint) for every one."""

    def __init__(self, problems: list[Problem]):
        self.source = "drills"
        self.problems = problems
        lines = [f"{path}: {msg}" + (f" (HINT: {hint})" if hint else "") for path, msg, hint in problems]
        UsageError.__init__(self, f"invalid drill definitions: {len(problems)} problem(s)\n" + "\n".join(lines))


def _loc(loc: tuple) -> str:
    """Dotted path of a pydantic error location, without the check-kind tag.

    >>> _loc(("checks", 1, "sql", "expect_rows", 0))
    'checks[1].expect_rows[0]'
    >>> _loc(("source", "site"))
    'source.site'
    """
    parts: list[str] = []
    for i, item in enumerate(loc):
        if i >= 2 and loc[i - 2] == "checks" and isinstance(loc[i - 1], int) and isinstance(item, str):
            continue  # the discriminator tag pydantic inserts
        parts.append(f"[{item}]" if isinstance(item, int) else ("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def policy_dir(policy) -> Path:
    src = getattr(policy, "_source", None)
    return Path(src).resolve().parent if src else Path.cwd()


def drill_files(policy) -> list[Path]:
    """Every file matched by the policy's ``drills:`` globs, in a stable order."""
    base = policy_dir(policy)
    out: list[Path] = []
    for pattern in policy.drills:
        pat = pattern if os.path.isabs(pattern) else str(base / pattern)
        for f in sorted(glob.glob(pat)):
            p = Path(f)
            if p.is_file() and p not in out:
                out.append(p)
    return out


def _semantic(policy, raw: dict) -> list[tuple[str, str, str | None]]:
    """Cross-references to the policy, checked on the raw document so they come with type errors."""
    out = []
    src = raw.get("source") if isinstance(raw.get("source"), dict) else {}
    job_name, method, site = src.get("job"), src.get("method"), src.get("site", EACH)
    job = None
    if isinstance(job_name, str):
        job = policy.jobs.get(job_name)
        if job is None:
            out.append(("source.job", f"job {job_name!r} does not exist",
                        f"jobs defined: {', '.join(policy.jobs) or 'none'}"))
        elif isinstance(method, str) and method != job.method:
            out.append(("source.method", f"job {job_name!r} is a {job.method} job, not {method}",
                        "drop source.method or name a job of that method"))
    kind = job.method if job is not None else method
    if isinstance(site, str) and site != EACH:
        if site not in policy.sites:
            out.append(("source.site", f"site {site!r} does not exist",
                        f"defined sites: {', '.join(policy.sites)}; or '{EACH}'"))
        elif job is not None and job.sites and site not in job.sites and kind not in pitr_methods():
            out.append(("source.site", f"job {job_name!r} does not keep backups at site {site!r}",
                        f"its sites: {', '.join(job.sites)}"))
    target = raw.get("target", "latest")
    if kind == "standby":
        # A delayed standby is drilled by undoing a canary through it (drills/source_standby.py).
        if not (isinstance(target, str) and target.strip() == "canary"):
            out.append(("target", "a standby is drilled with target: canary", "set target: canary"))
        if job is None:
            out.append(("source.job", "a standby drill names its standby job", "set source.job: <the standby job>"))
    elif isinstance(target, str) and (target.strip() == "canary" or target.strip().startswith("-")):
        if isinstance(kind, str) and kind not in pitr_methods():
            out.append(("target", f"target {target.strip()!r} needs point-in-time recovery, which a {kind} backup cannot do",
                        f"use a source of method {' or '.join(pitr_methods())}, or target latest/random"))
    return out


def parse_drill(policy, text: str, source: str, default_name: str) -> tuple[Drill | None, list[Problem]]:
    """Parse one drill document; return the drill or the list of its problems."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        return None, [(f"{source}: (yaml {where})", f"not valid YAML: {getattr(exc, 'problem', exc)}", None)]
    if not isinstance(raw, dict):
        return None, [(f"{source}: (top level)", "a drill must be a mapping", "see restore_drills/README.md")]
    raw.setdefault("name", default_name)
    problems: list[Problem] = []
    drill = None
    try:
        drill = Drill.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            msg, hint = translate_error(err)
            if err["type"] == "extra_forbidden":
                hint = "remove it or check its spelling against docs/drills.md"
            if err["type"] == "check_kind":
                hint = "e.g. {sql: 'SELECT count(*) > 0 FROM orders', database: app} or {amcheck: true}"
            problems.append((f"{source}: {_loc(err['loc'])}", msg, hint))
    problems += [(f"{source}: {p}", m, h) for p, m, h in _semantic(policy, raw)]
    seen: set = set()
    problems = [p for p in problems if not (p[:2] in seen or seen.add(p[:2]))]
    return (None if problems else drill), problems


def load_drills(policy, names: list[str] | None = None) -> list[Drill]:
    """All drills the policy points at (or the named ones), validated; DrillDefinitionError lists every problem."""
    base = policy_dir(policy)
    drills: list[Drill] = []
    problems: list[Problem] = []
    where: dict[str, str] = {}
    for i, pattern in enumerate(policy.drills):
        # A glob may match nothing (no drills yet); a plain path that names no file is a typo or a
        # moved file, and "no drills defined" would hide that the restores are no longer proven.
        if not glob.has_magic(pattern) and not (Path(pattern) if os.path.isabs(pattern) else base / pattern).is_file():
            problems.append((f"policy drills[{i}]", f"{pattern}: no such file",
                             "fix the path (relative paths are relative to the policy file) or remove it"))
    for f in drill_files(policy):
        rel = os.path.relpath(f, base)
        try:
            text = f.read_text()
        except OSError as exc:
            problems.append((rel, f"cannot read: {exc.strerror}", None))
            continue
        drill, probs = parse_drill(policy, text, rel, f.stem)
        problems += probs
        if drill is not None:
            if drill.name in where:
                problems.append((f"{rel}: name", f"drill {drill.name!r} is also defined in {where[drill.name]}",
                                 "give each drill its own name"))
            where[drill.name] = rel
            drills.append(drill)
    if problems:
        raise DrillDefinitionError(problems)
    if names:
        known = {d.name: d for d in drills}
        missing = [n for n in names if n not in known]
        if missing:
            raise UsageError(f"no drill named {', '.join(repr(n) for n in missing)}",
                             f"drills defined: {', '.join(known) or 'none'} (policy drills: {policy.drills})")
        return [known[n] for n in names]
    return drills
