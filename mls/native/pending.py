"""Pending commits: a commit of ours, stored but not applied until the delivery service answers.

A delivery service (DS) orders the handshake messages of a group and accepts one commit per
epoch.  Applying our own commit at once forks us off the group when the DS picks another
member's commit instead, so the engine can keep the commit *pending*: its exact bytes (and
Welcome) are stored together with the epoch state it leads to, in one row of
``native/v1/pending_commit`` keyed by group id, and nothing else of the group changes.

* the DS accepted it → ``merge_pending_commit`` writes the stored next epoch;
* the DS rejected it → ``clear_pending_commit`` deletes the row (the current epoch was
  never touched, so the member simply continues);
* we crashed before the DS answered → the row survived in the vault, and
  ``pending_commit`` hands back the very same bytes to resend (never re-created with fresh
  randomness: a second, different commit for the same epoch would be a fork).

Row layout (after the row format byte ``0x01``)::

    u64     epoch            the epoch the commit was made in (it leads to epoch + 1)
    u8      external         1 for an external commit (we are not a member yet)
    opaque  commit           the MLSMessage bytes handed to the application
    optional<opaque> welcome the Welcome MLSMessage for added members
    opaque  config           the group's GroupConfig (needed to merge an external join)
    opaque  confirmation_tag the commit's confirmation tag
    opaque  next_epoch       the GroupEpoch we enter on merge (its private keys included)

``opaque`` is a QUIC varint length then bytes, ``optional`` a presence byte, as in RFC 9420.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Reader, Writer, decode_exact
from .join import GroupEpoch
from .rows import GroupConfig, read_versioned, versioned

__all__ = ["PendingCommit", "PendingCommitRow"]


@dataclass(frozen=True, slots=True)
class PendingCommit:
    """What to (re)send to the delivery service for a commit awaiting its answer.

    Attributes:
        commit: the commit MLSMessage, byte-identical to what the commit call returned.
        welcome: the Welcome MLSMessage for the members it adds, or ``None``.
        epoch: the epoch the commit was made in; merging moves the group to ``epoch + 1``.
        external: an external commit (a join by GroupInfo): the group exists locally only
            once it is merged.
    """

    commit: bytes
    welcome: bytes | None
    epoch: int
    external: bool = False


@dataclass(frozen=True, slots=True, repr=False)
class PendingCommitRow:
    """The stored form of a pending commit: the bytes to resend and the state to merge."""

    pending: PendingCommit
    config: GroupConfig
    confirmation_tag: bytes
    next_epoch: GroupEpoch

    def __repr__(self) -> str:
        """Never print secrets."""
        return f"PendingCommitRow(epoch={self.pending.epoch}, external={self.pending.external})"

    def to_bytes(self) -> bytes:
        """The row value (format byte first)."""

        def write(w: Writer) -> None:
            p = self.pending
            w.u64(p.epoch)
            w.boolean(p.external)
            w.opaque(p.commit)
            w.boolean(p.welcome is not None)
            if p.welcome is not None:
                w.opaque(p.welcome)
            w.opaque(self.config.to_bytes())
            w.opaque(self.confirmation_tag)
            w.opaque(self.next_epoch.to_bytes())

        return versioned(write)

    @classmethod
    def from_bytes(cls, data: bytes) -> PendingCommitRow:
        """Strict inverse of :meth:`to_bytes`; raises :class:`DecodeError`."""

        def read(r: Reader) -> PendingCommitRow:
            epoch, external, commit = r.u64(), r.boolean(), r.opaque()
            welcome = r.opaque() if r.boolean() else None
            config = decode_exact(r.opaque(), GroupConfig.decode)
            tag = r.opaque()
            group = GroupEpoch.from_bytes(r.opaque())
            return cls(PendingCommit(commit, welcome, epoch, external), config, tag, group)

        return read_versioned(data, read)
