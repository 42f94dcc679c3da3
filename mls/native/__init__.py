"""Native, dependency-light implementation of the MLS (RFC 9420) building blocks."""

from .errors import (
    AuthenticationError,
    CryptoError,
    DecodeError,
    EncodeError,
    InvalidMessage,
    InvalidSignature,
    InvalidTag,
    InvalidTree,
    KeyNotFound,
    MlsError,
    UnsupportedCipherSuite,
)
from .suites import SUITES, CipherSuite, get_suite

__all__ = [
    "SUITES",
    "AuthenticationError",
    "CipherSuite",
    "CryptoError",
    "DecodeError",
    "EncodeError",
    "InvalidMessage",
    "InvalidSignature",
    "InvalidTag",
    "InvalidTree",
    "KeyNotFound",
    "MlsError",
    "UnsupportedCipherSuite",
    "get_suite",
]
