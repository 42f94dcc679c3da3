"""What every campaign shares: the report it returns, sizes, and file helpers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from keystore import profiles

__all__ = [
    "FAST_KDF",
    "PASSPHRASE",
    "CampaignReport",
    "Size",
    "tree_digest",
]

#: Campaigns create many vaults; Argon2 at real cost would dominate every run.
FAST_KDF = profiles.INSECURE_FOR_TESTS_ONLY
PASSPHRASE = "campaign passphrase \u00e9t\u00e9"


@dataclass(frozen=True, slots=True)
class Size:
    """How big a campaign run is: the quick size runs in CI, the full size by hand."""

    quick: int
    full: int

    def pick(self, full: bool) -> int:
        """The size for this run."""
        return self.full if full else self.quick


@dataclass(slots=True)
class CampaignReport:
    """What a campaign tried and what it found.

    ``findings`` lists every defect observed (an empty list is a clean run); each entry
    says what was expected and what happened, never a secret or a plaintext value.
    """

    name: str
    trials: int = 0
    findings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def count(self, what: str, n: int = 1) -> None:
        """Add ``n`` to the named counter."""
        self.counts[what] = self.counts.get(what, 0) + n

    def find(self, what: str) -> None:
        """Record a defect."""
        self.findings.append(what)

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.findings

    def summary(self) -> str:
        """One paragraph for the console and the docs table."""
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        lines = [f"{self.name}: {self.trials} trials, {len(self.findings)} findings ({counts})"]
        lines += [f"  FINDING: {f}" for f in self.findings[:20]]
        if len(self.findings) > 20:
            lines.append(f"  ... and {len(self.findings) - 20} more")
        lines += [f"  skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def tree_digest(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory``, by relative path (to prove nothing changed)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
