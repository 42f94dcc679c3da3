"""Where the command's secrets come from, and the minimum a new passphrase must meet.

A secret is never taken from the command line (``ps`` shows argv to every user).
The vault passphrase comes from a file, the ``MLS_KEYSTORE_PASSPHRASE`` variable
(read once, then removed from the environment so no child process inherits it),
or a terminal prompt.  At a prompt a typo is forgiven: a mismatched confirmation,
a too-weak new passphrase or a wrong passphrase is asked again, at most
:data:`PROMPT_TRIES` times.  From a file or the variable there is one try: a
script that retried a wrong secret would only lock itself out more slowly.

The strength rule for a *new* passphrase (vault, new, or backup passphrase):
at least :data:`MIN_LENGTH` characters and an estimate of at least
:data:`MIN_BITS` bits, where the estimate is ``effective length x log2(pool)``:
the pool is the sum of the character classes used (26 lower case, 26 upper case,
10 digits, 33 ASCII punctuation and space, 100 for anything else) and the
effective length is the length capped at twice the number of distinct
characters, so ``aaaaaaaaaaaaaaaa`` or ``abababababab`` count for little.  It is a
floor against accidents, not a dictionary check: a long phrase of random words
is still the advice.
"""

from __future__ import annotations

import getpass
import math
import os
import stat
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from keystore.cipher import check_raw_key
from keystore.cli_common import UsageError
from keystore.errors import WrongPassphrase

__all__ = [
    "MIN_BITS",
    "MIN_LENGTH",
    "PASSPHRASE_ENV",
    "PROMPT_TRIES",
    "WeakPassphrase",
    "check_strength",
    "estimate_bits",
    "new_secret",
    "read_raw_key_file",
    "read_secret_file",
    "take_from_environment",
    "use_secret",
]

PASSPHRASE_ENV = "MLS_KEYSTORE_PASSPHRASE"
MIN_LENGTH = 12
MIN_BITS = 60
PROMPT_TRIES = 3

T = TypeVar("T")
Warn = Callable[[str], None]


class WeakPassphrase(UsageError):
    """A new passphrase below the documented minimum (length or estimated strength)."""


def _warn_stderr(message: str) -> None:
    print(f"mls-keystore: warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------- strength


def estimate_bits(passphrase: str) -> float:
    """A deliberately simple strength estimate in bits (see the module docstring)."""
    pool = 0
    if any(c in string.ascii_lowercase for c in passphrase):
        pool += 26
    if any(c in string.ascii_uppercase for c in passphrase):
        pool += 26
    if any(c in string.digits for c in passphrase):
        pool += 10
    if any(c in string.punctuation or c == " " for c in passphrase):
        pool += 33
    if any(not c.isascii() or (c.isspace() and c != " ") for c in passphrase):
        pool += 100
    if pool == 0:
        return 0.0
    effective = min(len(passphrase), 2 * len(set(passphrase)))
    return effective * math.log2(pool)


def check_strength(passphrase: str, what: str = "passphrase") -> None:
    """Refuse a new passphrase below the minimum.

    Raises:
        WeakPassphrase: shorter than :data:`MIN_LENGTH` characters, or estimated
            below :data:`MIN_BITS` bits.  The message never contains the passphrase.
    """
    if len(passphrase) < MIN_LENGTH:
        raise WeakPassphrase(
            f"the {what} is {len(passphrase)} characters; use at least {MIN_LENGTH} "
            "(a few random words are easy to type and strong)"
        )
    bits = estimate_bits(passphrase)
    if bits < MIN_BITS:
        raise WeakPassphrase(
            f"the {what} is too predictable (estimated {bits:.0f} bits, minimum "
            f"{MIN_BITS}): avoid repeated characters and use a few random words"
        )


# ---------------------------------------------------------------------- sources


def take_from_environment() -> str | None:
    """Read ``MLS_KEYSTORE_PASSPHRASE`` and remove it from this process's environment.

    Removing it (``os.environ.pop`` also unsets it in the C environment) keeps the
    secret out of every child process and of ``/proc/<pid>/environ`` of children.
    """
    return os.environ.pop(PASSPHRASE_ENV, None)


def _warn_if_exposed(path: Path, what: str, fd: int, warn: Warn) -> None:
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) and mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        warn(
            f"the {what} file {path} can be read or changed by other users "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )


def _read_file(path: str | os.PathLike[str], what: str, warn: Warn) -> bytes:
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        raise UsageError(f"cannot read the {what} file {p}: {exc.strerror}") from None
    try:
        _warn_if_exposed(p, what, fd, warn)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(1 << 20)  # a secret file is small; a device is not read forever
    except OSError as exc:
        raise UsageError(f"cannot read the {what} file {p}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_secret_file(
    path: str | os.PathLike[str], what: str, warn: Warn = _warn_stderr
) -> str:
    """A passphrase file's UTF-8 text minus one trailing newline (warns if others can read it)."""
    data = _read_file(path, what, warn)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} file {path} is not UTF-8 text") from None
    # One trailing newline is how editors and `echo` end a file, not part of the secret.
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise UsageError(f"the {what} file {path} is empty")
    return text


def read_raw_key_file(path: str | os.PathLike[str], warn: Warn = _warn_stderr) -> bytes:
    """A raw key file: 32 bytes, or 64 hex digits (optionally newline-terminated)."""
    data = _read_file(path, "raw key", warn)
    if len(data) != 32:
        try:
            data = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise UsageError(
                f"the raw key file {path} must hold 32 bytes or 64 hex digits"
            ) from None
    try:
        return check_raw_key(data)
    except ValueError as exc:
        raise UsageError(f"the raw key file {path}: {exc}") from None


# ---------------------------------------------------------------------- prompts


def _ask(label: str, hint: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError(f"no {label.lower()} given and no terminal to ask on: {hint}")
    try:
        return getpass.getpass(f"{label}: ")
    except EOFError:  # Ctrl-D at the prompt
        raise UsageError(f"no {label.lower()} entered") from None


def _tell(message: str) -> None:
    print(message, file=sys.stderr)


def new_secret(
    file: str | None, env: str | None, *, label: str, hint: str, what: str,
    warn: Warn = _warn_stderr,
) -> str:
    """A NEW secret: from ``file``, else ``env``, else the prompt (asked twice).

    At the prompt, an empty, weak or mismatched entry is asked again, up to
    :data:`PROMPT_TRIES` times.

    Raises:
        WeakPassphrase: below the strength rule (from a file or the variable, or
            at the last prompt).
        UsageError: no source, or the confirmations never matched.
    """
    if file:
        secret = read_secret_file(file, what, warn)
        check_strength(secret, what)
        return secret
    if env is not None:
        if not env:
            raise UsageError(f"{PASSPHRASE_ENV} is set but empty")
        check_strength(env, what)
        return env
    for attempt in range(1, PROMPT_TRIES + 1):
        last = attempt == PROMPT_TRIES
        secret = _ask(label, hint)
        try:
            if not secret:
                raise UsageError(f"empty {label.lower()}")
            check_strength(secret, what)
        except UsageError as exc:
            if last:
                raise
            _tell(f"{exc}; try again")
            continue
        if _ask(f"{label} (again)", hint) == secret:
            return secret
        if last:
            raise UsageError(f"the two {label.lower()}s differ ({PROMPT_TRIES} tries)")
        _tell(f"the two {label.lower()}s differ; try again")
    raise AssertionError("unreachable")  # pragma: no cover


def use_secret(
    file: str | None, env: str | None, use: Callable[[str], T], *, label: str, hint: str,
    what: str, warn: Warn = _warn_stderr,
) -> T:
    """Call ``use(secret)`` with an EXISTING secret; at a prompt, retry a wrong one.

    ``use`` raises :class:`WrongPassphrase` for a wrong secret; at the prompt that is
    asked again up to :data:`PROMPT_TRIES` times, from a file or ``env`` never.
    """
    if file:
        return use(read_secret_file(file, what, warn))
    if env is not None:
        if not env:
            raise UsageError(f"{PASSPHRASE_ENV} is set but empty")
        return use(env)
    for attempt in range(1, PROMPT_TRIES + 1):
        secret = _ask(label, hint)
        if not secret:
            raise UsageError(f"empty {label.lower()}")
        try:
            return use(secret)
        except WrongPassphrase:
            if attempt == PROMPT_TRIES:
                raise
            _tell(f"wrong {label.lower()}; try again ({PROMPT_TRIES - attempt} left)")
    raise AssertionError("unreachable")  # pragma: no cover
