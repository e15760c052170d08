"""YAML -> Policy, with every problem reported at once as (dotted path, message, hint)."""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import PolicyError, UsageError
from .model import METHODS, METHODS_NEEDING_SITES, Policy

ENV = "PGVAULT_POLICY"
DEFAULT_PATHS = ("/etc/pgvault/policy.yaml",)


def policy_path(given: str | None) -> Path:
    """The policy file from --policy, $PGVAULT_POLICY or /etc/pgvault/policy.yaml."""
    path = given or os.environ.get(ENV)
    if not path:
        for p in DEFAULT_PATHS:
            if Path(p).exists():
                path = p
                break
    if not path:
        raise UsageError("no policy given", f"pass --policy FILE or set {ENV}")
    return Path(path)


def _loc_to_path(loc: tuple) -> str:
    parts = []
    for i, item in enumerate(loc):
        # A discriminated union inserts its tag (jobs.x.logical.schedule; sites.a.s3.bucket): drop it.
        if i >= 2 and loc[i - 2] in ("jobs", "sites") and isinstance(item, str) and item in METHODS + ("local", "s3"):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def error_path(err: dict) -> str:
    """The dotted path of a validation error. A wrong or missing discriminator (a site's
    ``type``, a job's ``method``) is reported at that key, not at the site or job holding it.

    >>> error_path({"type": "union_tag_invalid", "loc": ("sites", "l"), "ctx": {"discriminator": "'type'"}})
    'sites.l.type'
    """
    path = _loc_to_path(err["loc"])
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        key = str(err.get("ctx", {}).get("discriminator", "")).strip("'\"")
        if key:
            path = f"{path}.{key}" if err["loc"] else key
    return path


def translate_error(err: dict) -> tuple[str, str | None]:
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        return "unknown key", "remove it or check its spelling against docs/policy.md"
    if kind == "missing":
        return "required key is missing", None
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown value {ctx.get('tag')!r}", f"expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "required key is missing", None
    if kind == "value_error":
        return msg.removeprefix("Value error, "), None
    if kind == "greater_than_equal":
        return f"must be >= {err['ctx']['ge']} (got {err['input']!r})", None
    return msg, None


def _semantic_problems(raw: dict) -> list[tuple[str, str, str | None]]:
    """Cross-references, checked on the raw document so they are reported alongside type errors."""
    out: list[tuple[str, str, str | None]] = []
    sites = raw.get("sites") if isinstance(raw.get("sites"), dict) else {}
    names = set(sites)

    def refs(path: str, value) -> None:
        if not isinstance(value, list):
            return
        for i, name in enumerate(value):
            if isinstance(name, str) and name not in names:
                out.append((f"{path}[{i}]", f"site {name!r} does not exist",
                            f"defined sites: {', '.join(sorted(names)) or 'none'}"))
        dupes = {n for n in value if isinstance(n, str) and value.count(n) > 1}
        for d in sorted(dupes):
            out.append((path, f"site {d!r} is listed twice", None))

    wal = raw.get("wal")
    if isinstance(wal, dict):
        refs("wal.sites", wal.get("sites"))
        n, wsites = wal.get("sync_sites"), wal.get("sites")
        if isinstance(n, int) and not isinstance(n, bool) and isinstance(wsites, list) and not 1 <= n <= len(wsites):
            out.append(("wal.sync_sites", f"must be between 1 and the number of wal.sites ({len(wsites)})",
                        "'all' (the default) waits for every site; 1 waits for the first site that is up"))
    jobs = raw.get("jobs") if isinstance(raw.get("jobs"), dict) else {}
    for jname, job in jobs.items():
        if not isinstance(job, dict):
            continue
        refs(f"jobs.{jname}.sites", job.get("sites"))
        if isinstance(job.get("retain_at"), dict):
            for s in job["retain_at"]:
                if s not in names:
                    out.append((f"jobs.{jname}.retain_at.{s}", f"site {s!r} does not exist", None))
                elif isinstance(job.get("sites"), list) and s not in job["sites"]:
                    out.append((f"jobs.{jname}.retain_at.{s}", f"site {s!r} is not one of this job's sites", None))
        if job.get("method") in METHODS_NEEDING_SITES and not job.get("sites"):
            out.append((f"jobs.{jname}.sites", f"a {job['method']} job needs at least one site", None))
    # Two sites pointing at the same place would each believe they hold an independent copy.
    # Each site configuration names its place (location_key); invalid ones are reported above.
    from pydantic import TypeAdapter

    from ..sites.base import overlaps
    from .model import Site as SiteConfig

    placed: list[tuple[str, tuple]] = []
    for sname, site in sites.items():
        try:
            config = TypeAdapter(SiteConfig).validate_python(site)
        except ValidationError:
            continue
        key = config.location_key()
        for other, other_key in placed:
            if overlaps(key, other_key):
                out.append((f"sites.{sname}.{config.location_field}",
                            f"overlaps site {other!r} (the same place, or one inside the other)",
                            "give each site its own directory, or its own bucket or a distinct prefix"))
        placed.append((sname, key))
    return out


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy document; raise PolicyError listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise PolicyError(source, [(f"(yaml {where})", f"not valid YAML: {getattr(exc, 'problem', exc)}", None)])
    if not isinstance(raw, dict):
        raise PolicyError(source, [("(top level)", "the policy must be a mapping", "see policies/ for examples")])
    problems: list[tuple[str, str, str | None]] = []
    policy = None
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            msg, hint = translate_error(err)
            problems.append((error_path(err), msg, hint))
    problems += _semantic_problems(raw)
    # De-duplicate while keeping order.
    seen = set()
    unique = [p for p in problems if not (p[:2] in seen or seen.add(p[:2]))]
    if unique:
        raise PolicyError(source, unique)
    assert policy is not None
    return policy


def load_policy(path: str | os.PathLike | None = None) -> Policy:
    p = policy_path(str(path) if path else None)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"policy file {p} does not exist", f"pass --policy FILE or set {ENV}") from None
    except PermissionError:
        raise UsageError(f"policy file {p} is not readable by this user") from None
    except IsADirectoryError:
        raise UsageError(f"policy file {p} is a directory", "pass the policy's YAML file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(str(p), [("(file)", f"not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})",
                                    "a policy is a YAML text file; see policies/ for examples")]) from None
    policy = parse_policy(text, str(p))
    object.__setattr__(policy, "_source", p)
    return policy
