"""Confirmed and interim transcript hashes (RFC 9420 §8.2)."""

from __future__ import annotations

from .codec import opaque_bytes
from .errors import InvalidMessage
from .framing import AuthenticatedContent, ContentType
from .suites import CipherSuite


def confirmed_transcript_hash(
    cs: CipherSuite, interim_before: bytes, content: AuthenticatedContent
) -> bytes:
    """Hash(interim_transcript_hash_[n-1] || ConfirmedTranscriptHashInput_[n])."""
    if content.content.content_type != ContentType.COMMIT:
        raise InvalidMessage("transcript hashes cover commits only")
    return cs.hash(interim_before + content.confirmed_transcript_input())


def interim_transcript_hash(cs: CipherSuite, confirmed: bytes, confirmation_tag: bytes) -> bytes:
    """Hash(confirmed_transcript_hash_[n] || InterimTranscriptHashInput_[n])."""
    return cs.hash(confirmed + opaque_bytes(confirmation_tag))


def update_transcript(
    cs: CipherSuite, interim_before: bytes, content: AuthenticatedContent
) -> tuple[bytes, bytes]:
    """(confirmed, interim) transcript hashes after a commit."""
    tag = content.auth.confirmation_tag
    if tag is None:
        raise InvalidMessage("commit without confirmation tag")
    confirmed = confirmed_transcript_hash(cs, interim_before, content)
    return confirmed, interim_transcript_hash(cs, confirmed, tag)
