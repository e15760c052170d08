"""Writes docs/policy.md from the policy models' field descriptions (run after changing them).

    /opt/pgvault/venv/bin/python scripts/gen_policy_doc.py
"""
from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgvault.policy import model  # noqa: E402


def type_name(ann) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (list,):
        return f"list of {type_name(args[0])}"
    if origin in (dict,):
        return f"map of {type_name(args[1])}"
    name = getattr(ann, "__name__", str(ann))
    return {"timedelta": "duration", "str": "string", "int": "integer", "bool": "boolean", "float": "number"}.get(name, name)


def section(cls: type[BaseModel], title: str, seen: set) -> list[str]:
    if cls in seen:
        return []
    seen.add(cls)
    out = [f"\n## {title}\n", "| key | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for name, f in cls.model_fields.items():
        default = "required" if f.is_required() else ("" if f.default_factory else repr(f.default))
        out.append(f"| `{f.alias or name}` | {type_name(f.annotation)} | {default} | {f.description or ''} |")
        for t in [f.annotation, *typing.get_args(f.annotation)]:
            for tt in [t, *typing.get_args(t)]:
                if isinstance(tt, type) and issubclass(tt, BaseModel):
                    nested.append(tt)
    for n in nested:
        out += section(n, f"{n.__name__}", seen)
    return out


def main() -> None:
    lines = ["# Policy reference", "",
             "Generated from `pgvault/policy/model.py` by `scripts/gen_policy_doc.py`. Unknown keys are",
             "rejected; every problem is reported at once with its dotted path (exit code 2).",
             "Durations are written `90s`, `5m`, `1h30m`, `7d`, `2w`."]
    seen: set = set()
    lines += section(model.Policy, "Policy (top level)", seen)
    for job in typing.get_args(typing.get_args(model.Job)[0]):
        lines += section(job, f"Job: method {job.model_fields['method'].annotation.__args__[0]!r}", seen)
    for site in typing.get_args(typing.get_args(model.Site)[0]):
        lines += section(site, f"Site: type {site.model_fields['type'].annotation.__args__[0]!r}", seen)
    (ROOT / "docs" / "policy.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
