"""The policy's `encryption:` block (top level, or per site), next to the code it configures.
Only public keys (age recipients) ever appear in a policy; identities come at read time."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Encryption(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    recipients: list[str] = Field(min_length=1, description="age recipients (public keys, `age1…`) every artifact "
                                  "and WAL file is encrypted to; several allowed (e.g. an offline break-glass key)")

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, v: list[str]) -> list[str]:
        from .age import parse_recipient

        out = []
        for i, r in enumerate(v):
            if r.strip().upper().startswith("AGE-SECRET-KEY-"):
                raise ValueError(f"item {i} is a private key (AGE-SECRET-KEY-…): a policy holds only public keys; "
                                 "give the recipient `age-keygen -y KEYFILE` prints, and remove the private key from the policy")
            try:
                parse_recipient(r)
            except ValueError as exc:
                raise ValueError(f"item {i} {r[:12]!r}…: {exc}") from None
            out.append(r.strip())
        if len(set(out)) != len(out):
            raise ValueError("a recipient is listed twice")
        return out
