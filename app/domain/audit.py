"""Audit records: every refusal (responsible gaming, anti-fraud, KYC/AML) and every
configuration change of a player, with its reason. They are outputs of a decision, not
state: the agent emits them and the ledger flush stores them in PostgreSQL `audit_log`."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class AuditRecord:
    tenant_id: str
    # Unique per tenant and deterministic for one command message, so a replayed message
    # stores its record once: built from the operation key, request hash and received time.
    audit_id: str
    player_id: str
    kind: str  # "refusal" | "limits_changed" | "status_changed" | "adjustment"
    code: str  # the result code or the change, e.g. "deposit_limit_exceeded"
    created_at_ms: int
    detail: dict = field(default_factory=dict)  # JSON-serialisable reason and figures

    def to_wire(self) -> list:
        return [self.tenant_id, self.audit_id, self.player_id, self.kind, self.code, self.created_at_ms, self.detail]

    @classmethod
    def from_wire(cls, row: list) -> "AuditRecord":
        return cls(*row)
