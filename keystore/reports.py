"""Frozen pydantic reports returned by :meth:`Vault.stats` and :meth:`Vault.verify`.

They are what ``mls-keystore --json`` prints, so their field names are part of the
command's machine interface.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["CategoryStats", "KdfInfo", "RowFailure", "StatsReport", "VerifyReport"]

#: AES-GCM with random 96-bit nonces: NIST SP 800-38D §8.3 caps one key at 2**32 encryptions.
NONCE_BUDGET = 2**32
#: Recommend a rekey once a quarter of the budget is spent, long before the limit.
REKEY_RECOMMENDED_AT = NONCE_BUDGET // 4


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KdfInfo(_Report):
    """How the vault's secrets are wrapped."""

    kind: str  # "argon2id" or "raw-key"
    time_cost: int | None = None
    memory_cost_kib: int | None = None
    parallelism: int | None = None


class CategoryStats(_Report):
    """Row count and stored bytes of one category."""

    rows: int
    bytes: int


class StatsReport(_Report):
    """What is stored, and how much of the data key's nonce budget is spent."""

    path: str
    store_id: str
    schema_version: int
    header_format: int
    sqlcipher: bool
    kdf: KdfInfo
    key_generation: int
    categories: dict[str, CategoryStats]
    total_rows: int
    total_bytes: int
    file_bytes: int
    encryptions: int
    nonce_budget: int = NONCE_BUDGET
    budget_used: float
    rekey_recommended: bool


class RowFailure(_Report):
    """A row that failed to decrypt: where it is, never what it holds."""

    category: str
    key_hash: str
    reason: str


class VerifyReport(_Report):
    """Result of decrypting every row."""

    ok: bool
    rows_checked: int
    failures: list[RowFailure]
