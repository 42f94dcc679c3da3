"""``mls-keystore mls ...``: read-only inspection of an MLS client vault from the shell.

Subcommands: ``groups``, ``members``, ``key-packages``, ``pending``.  Each opens the vault
read-only through :class:`mls.inspection.MlsInspector` (no writer lock, nothing ever
written) -- a file, or a vault in PostgreSQL named by ``--dsn DSN NAME`` or a
``postgresql://.../DB#NAME`` URL (no writer lease taken) -- unlocks it like the other
``mls-keystore`` commands (``--passphrase-file``, the ``MLS_KEYSTORE_PASSPHRASE``
variable or a prompt; ``--raw-key-file`` for a raw-key vault) and prints a table, or
one JSON object with ``--json``.  Group ids, references and keys are shown in hex.

The vault layer knows no MLS, so this module lives here and ``keystore.cli`` imports it
only when the ``mls`` command is run (as it does for ``demo``).  Failures print one line
and exit with the codes of :class:`keystore.cli_common.ExitCode`; see docs/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pydantic import BaseModel, ConfigDict

from keystore import Vault
from keystore.cli_common import ExitCode, MissingExtra, UsageError
from keystore.errors import (
    KeystoreError,
    MigrationRequired,
    NotAVault,
    SchemaTooNew,
    VaultBusy,
    VaultIOError,
    WrongPassphrase,
)
from keystore.passphrase import (
    PASSPHRASE_ENV,
    read_raw_key_file,
    take_from_environment,
    use_secret,
)
from mls.engine import GroupState, Member
from mls.errors import MlsError, NotAnMlsVault, UnknownGroup
from mls.inspection import KeyPackageInfo, MlsInspector

if TYPE_CHECKING:
    from keystore.postgres_vault import PostgresVault

__all__ = ["main"]

_PROG = "mls-keystore mls"
_COMMANDS = ("groups", "members", "key-packages", "pending")
_SOURCE_HINT = f"use --passphrase-file FILE or set {PASSPHRASE_ENV}"


# ---------------------------------------------------------------------- reports


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorReport(_Report):
    """Printed on stdout with ``--json`` when a command fails (as every command does)."""

    ok: bool = False
    error: str
    exit_code: int
    message: str


class ClientInfo(_Report):
    """Whose vault this is."""

    path: str
    engine: str
    identity: str  # hex
    identity_text: str | None  # the identity as text, when it is printable UTF-8
    cipher_suite: int


class GroupSummary(_Report):
    """One line of ``groups``."""

    group_id: str  # hex
    epoch: int
    cipher_suite: int
    members: int
    own_leaf_index: int
    handshake: str
    pending_commit: bool
    pending_proposals: int | None  # None: the engine (mls-rs) does not expose them


class GroupsReport(_Report):
    """``groups``: the client and every group it is in."""

    client: ClientInfo
    groups: list[GroupSummary]


class MemberInfo(_Report):
    """One member of a group, as its leaf shows it (keys in hex)."""

    leaf_index: int
    identity: str
    identity_text: str | None
    signature_key: str
    encryption_key: str
    is_self: bool


class MembersReport(_Report):
    """``members``: the roster of one group at its current epoch."""

    client: ClientInfo
    group_id: str
    epoch: int
    members: list[MemberInfo]


class KeyPackageReport(_Report):
    """One published key package (``None``: the engine does not record that fact)."""

    ref: str
    cipher_suite: int | None
    not_before: int | None
    not_after: int | None
    last_resort: bool
    created_at: int | None


class KeyPackagesReport(_Report):
    """``key-packages``: the key packages published and not yet joined with."""

    client: ClientInfo
    key_packages: list[KeyPackageReport]


class PendingCommitInfo(_Report):
    """Our commit awaiting the delivery service; resend exactly these bytes after a restart."""

    epoch: int
    external: bool
    commit_bytes: int
    commit_sha256: str
    welcome_bytes: int | None


class ProposalInfo(_Report):
    """A proposal waiting for the next commit."""

    kind: str
    sender: int
    ref: str


class GroupPending(_Report):
    """What waits in one group."""

    group_id: str
    epoch: int
    pending_commit: PendingCommitInfo | None
    pending_proposals: list[ProposalInfo] | None  # None on mls-rs


class PendingReport(_Report):
    """``pending``: pending commits and proposals of one group or of every group."""

    client: ClientInfo
    groups: list[GroupPending]


# ---------------------------------------------------------------------- helpers


def _text(identity: bytes) -> str | None:
    try:
        text = identity.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _client_info(path: str, inspector: MlsInspector) -> ClientInfo:
    return ClientInfo(
        path=str(path),
        engine=inspector.engine_name,
        identity=inspector.identity.hex(),
        identity_text=_text(inspector.identity),
        cipher_suite=inspector.cipher_suite,
    )


def _group_id(inspector: MlsInspector, text: str) -> bytes:
    """A group id from its hex, or from a hex prefix naming exactly one group."""
    wanted = text.strip().lower()
    if not wanted or any(c not in "0123456789abcdef" for c in wanted):
        raise UsageError("GROUP must be a group id in hex (as `groups` prints it)")
    matches = [g for g in inspector.group_ids() if g.hex().startswith(wanted)]
    exact = [g for g in matches if g.hex() == wanted]
    if exact:
        return exact[0]
    if not matches:
        raise UnknownGroup("this client is in no group with that id (see `groups`)")
    if len(matches) > 1:
        raise UsageError(f"the prefix {wanted} names {len(matches)} groups; give more digits")
    return matches[0]


def _summary(state: GroupState) -> GroupSummary:
    proposals = state.pending_proposals
    return GroupSummary(
        group_id=state.group_id.hex(),
        epoch=state.epoch,
        cipher_suite=state.cipher_suite,
        members=len(state.members),
        own_leaf_index=state.own_leaf_index,
        handshake=str(state.settings.handshake),
        pending_commit=state.pending_commit is not None,
        pending_proposals=None if proposals is None else len(proposals),
    )


def _member(m: Member, own_leaf: int) -> MemberInfo:
    return MemberInfo(
        leaf_index=m.leaf_index,
        identity=m.identity.hex(),
        identity_text=_text(m.identity),
        signature_key=m.signature_key.hex(),
        encryption_key=m.encryption_key.hex(),
        is_self=m.leaf_index == own_leaf,
    )


def _pending(state: GroupState) -> GroupPending:
    pc = state.pending_commit
    commit = None if pc is None else PendingCommitInfo(
        epoch=pc.epoch,
        external=pc.external,
        commit_bytes=len(pc.commit),
        commit_sha256=hashlib.sha256(pc.commit).hexdigest(),
        welcome_bytes=None if pc.welcome is None else len(pc.welcome),
    )
    proposals = state.pending_proposals
    return GroupPending(
        group_id=state.group_id.hex(),
        epoch=state.epoch,
        pending_commit=commit,
        pending_proposals=None if proposals is None else [
            ProposalInfo(kind=p.kind, sender=p.sender, ref=p.ref.hex()) for p in proposals
        ],
    )


def _key_package(info: KeyPackageInfo) -> KeyPackageReport:
    return KeyPackageReport(
        ref=info.ref.hex(),
        cipher_suite=info.cipher_suite,
        not_before=info.not_before,
        not_after=info.not_after,
        last_resort=info.last_resort,
        created_at=info.created_at,
    )


def _unknown(value: object) -> str:
    return "-" if value is None else str(value)


def _client_line(c: ClientInfo) -> str:
    who = repr(c.identity_text) if c.identity_text is not None else c.identity
    return f"client {who} ({c.engine} engine, default cipher suite {c.cipher_suite}): {c.path}"


# ---------------------------------------------------------------------- commands


def _cmd_groups(path: str, inspector: MlsInspector, args: argparse.Namespace) -> BaseModel:
    report = GroupsReport(
        client=_client_info(path, inspector),
        groups=[_summary(inspector.group_state(g)) for g in inspector.group_ids()],
    )
    if not args.json:
        print(_client_line(report.client))
        print(f"{'group id':<32}  {'epoch':>6}  suite  members  pending")
        for g in report.groups:
            waiting = []
            if g.pending_commit:
                waiting.append("commit")
            if g.pending_proposals:
                waiting.append(f"{g.pending_proposals} proposal(s)")
            print(f"{g.group_id:<32}  {g.epoch:>6}  {g.cipher_suite:>5}  {g.members:>7}  "
                  f"{', '.join(waiting) or '-'}")
        print(f"{len(report.groups)} group(s)")
        if report.client.engine == "mls-rs":
            print("mls-rs: pending proposals are not exposed, and there are no pending commits")
    return report


def _cmd_members(path: str, inspector: MlsInspector, args: argparse.Namespace) -> BaseModel:
    state = inspector.group_state(_group_id(inspector, args.group))
    report = MembersReport(
        client=_client_info(path, inspector),
        group_id=state.group_id.hex(),
        epoch=state.epoch,
        members=[_member(m, state.own_leaf_index) for m in state.members],
    )
    if not args.json:
        print(f"group {report.group_id}, epoch {report.epoch}")
        print(f"{'leaf':>5}  identity")
        for m in report.members:
            who = repr(m.identity_text) if m.identity_text is not None else m.identity
            print(f"{m.leaf_index:>5}  {who}{'  (this client)' if m.is_self else ''}")
        print(f"{len(report.members)} member(s)")
    return report


def _cmd_key_packages(
    path: str, inspector: MlsInspector, args: argparse.Namespace
) -> BaseModel:
    report = KeyPackagesReport(
        client=_client_info(path, inspector),
        key_packages=[_key_package(k) for k in inspector.key_packages()],
    )
    if not args.json:
        print(_client_line(report.client))
        print(f"{'reference':<64}  suite  {'not after':>10}  last resort  created")
        for k in report.key_packages:
            print(f"{k.ref:<64}  {_unknown(k.cipher_suite):>5}  {_unknown(k.not_after):>10}  "
                  f"{'yes' if k.last_resort else 'no':<11}  {_unknown(k.created_at)}")
        print(f"{len(report.key_packages)} key package(s)")
        if report.client.engine == "mls-rs" and report.key_packages:
            print("mls-rs: a key package can be joined with only by the process that made it")
    return report


def _cmd_pending(path: str, inspector: MlsInspector, args: argparse.Namespace) -> BaseModel:
    ids = [_group_id(inspector, args.group)] if args.group else inspector.group_ids()
    report = PendingReport(
        client=_client_info(path, inspector),
        groups=[_pending(inspector.group_state(g)) for g in ids],
    )
    if not args.json:
        for g in report.groups:
            print(f"group {g.group_id}, epoch {g.epoch}")
            c = g.pending_commit
            if c is None:
                print("  no pending commit")
            else:
                kind = "external commit" if c.external else "commit"
                welcome = "" if c.welcome_bytes is None else f", Welcome {c.welcome_bytes} B"
                print(f"  pending {kind} made in epoch {c.epoch}: {c.commit_bytes} B, "
                      f"sha256 {c.commit_sha256}{welcome}")
            if g.pending_proposals is None:
                print("  pending proposals: not exposed by the mls-rs engine")
            else:
                for p in g.pending_proposals:
                    print(f"  proposal {p.kind} from leaf {p.sender}, ref {p.ref}")
                if not g.pending_proposals:
                    print("  no pending proposals")
    return report


# ---------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """A usage error is a UsageError; unrecognized words are never repeated (one may be a
    passphrase typed on the command line by mistake)."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):
            message = ("unrecognized arguments (not repeated here; a passphrase is never read "
                       f"from the command line: {_SOURCE_HINT})")
        elif "invalid choice" in message:
            message = f"unknown command (not repeated here); choose from {', '.join(_COMMANDS)}"
        elif "required: COMMAND" in message:
            message += f" ({', '.join(_COMMANDS)})"
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False, allow_abbrev=False)
    common.add_argument("--json", action="store_true", help="one JSON object on stdout")
    common.add_argument("--passphrase-file", metavar="FILE",
                        help=f"read the vault passphrase from FILE (else ${PASSPHRASE_ENV}, "
                             "else a prompt)")
    common.add_argument("--raw-key-file", metavar="FILE",
                        help="unlock a raw-key vault with FILE (32 bytes or 64 hex digits)")
    common.add_argument("--dsn", metavar="DSN",
                        help="the vault is in this PostgreSQL database; PATH is its name (or "
                             "give PATH as postgresql://.../DB#NAME); see docs/postgres.md")
    common.add_argument("--schema", metavar="NAME", default="mls_keystore",
                        help="PostgreSQL schema holding the vaults (default mls_keystore)")
    common.add_argument("path", metavar="PATH",
                        help="the client's vault (with --dsn: its name)")
    parser = _Parser(prog=_PROG, allow_abbrev=False,
                     description="Inspect an MLS client vault, read-only (see docs/cli.md).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for name, func, text in (
        ("groups", _cmd_groups, "every group: epoch, cipher suite, members, what is pending"),
        ("members", _cmd_members, "the members of one group"),
        ("key-packages", _cmd_key_packages, "key packages published and not yet used"),
        ("pending", _cmd_pending, "pending commits and proposals (of one group, or all)"),
    ):
        p = sub.add_parser(name, parents=[common], help=text, description=text,
                           allow_abbrev=False)
        p.set_defaults(func=func)
        if name == "members":
            p.add_argument("group", metavar="GROUP", help="group id in hex (or a unique prefix)")
        elif name == "pending":
            p.add_argument("group", metavar="GROUP", nargs="?",
                           help="group id in hex (or a unique prefix); default: every group")
    return parser


def _unlock(vault: Vault | PostgresVault, where: str, args: argparse.Namespace) -> None:
    """Unlock with whichever secret the vault needs."""
    if vault.kdf is None:
        if args.passphrase_file:
            raise UsageError(f"{where} is keyed by a raw key, not a passphrase: use "
                             "--raw-key-file FILE instead of --passphrase-file")
        if not args.raw_key_file:
            raise UsageError(f"{where} is keyed by a raw key: pass --raw-key-file FILE")
        vault.unlock_with_key(read_raw_key_file(args.raw_key_file))
    else:
        if args.raw_key_file:
            raise UsageError(f"{where} is protected by a passphrase, not a raw key: drop "
                             f"--raw-key-file ({_SOURCE_HINT})")
        use_secret(args.passphrase_file, args.env_passphrase, vault.unlock,
                   label="Vault passphrase", hint=_SOURCE_HINT, what="passphrase")


@contextlib.contextmanager
def _inspect(args: argparse.Namespace) -> Iterator[tuple[str, MlsInspector]]:
    """Open the vault read-only, unlock it, and yield where it is and its inspector.

    A vault in PostgreSQL (``--dsn``, or a ``postgresql://`` URL) is opened as the
    reading ``mls-keystore`` commands open one: no writer lease, so it runs beside the
    worker that holds the vault, and nothing is written (not even the schema).
    """
    from keystore.cli_postgres import on_postgres, open_vault

    if on_postgres(args):
        with open_vault(args, readonly=True) as pg_vault:
            where = pg_vault.location
            _unlock(pg_vault, where, args)
            with MlsInspector(pg_vault) as inspector:
                yield where, inspector
        return
    where = args.path
    vault = Vault.open(Path(where), readonly=True)
    try:
        _unlock(vault, where, args)
        inspector = MlsInspector(vault)
    except BaseException:
        vault.close()
        raise
    with inspector:
        yield where, inspector


_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (UsageError, ExitCode.USAGE),
    (UnknownGroup, ExitCode.USAGE),
    (MissingExtra, ExitCode.MISSING_EXTRA),
    (ImportError, ExitCode.MISSING_EXTRA),  # MlsRsUnavailable, SQLCipherUnavailable
    (ValueError, ExitCode.USAGE),
    (WrongPassphrase, ExitCode.WRONG_PASSPHRASE),
    (VaultBusy, ExitCode.BUSY),
    (SchemaTooNew, ExitCode.SCHEMA_TOO_NEW),
    (NotAVault, ExitCode.NOT_A_VAULT),
    (NotAnMlsVault, ExitCode.NOT_A_VAULT),
    (MigrationRequired, ExitCode.MIGRATION_REQUIRED),
    (VaultIOError, ExitCode.IO_ERROR),
    (KeystoreError, ExitCode.FAILURE),
    (MlsError, ExitCode.FAILURE),
    (OSError, ExitCode.IO_ERROR),
)


def _fail(want_json: bool, exc: BaseException, code: ExitCode) -> int:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    message = " ".join(message.split())  # exactly one line
    if want_json:
        print(ErrorReport(error=type(exc).__name__, exit_code=int(code),
                          message=message).model_dump_json())
    print(f"{_PROG}: error: {message}", file=sys.stderr)
    return int(code)


def main(argv: Sequence[str], *, env_passphrase: str | None = None) -> int:
    """Run ``mls-keystore mls ARGV``; returns the exit code.

    ``env_passphrase``: the value of ``MLS_KEYSTORE_PASSPHRASE`` when the caller
    (``mls-keystore``) has already read and removed it; otherwise it is read (and
    removed from the environment) here.
    """
    env = take_from_environment()
    argv = list(argv)
    want_json = "--json" in argv
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else int(ExitCode.OK)
    except UsageError as exc:
        return _fail(want_json, exc, ExitCode.USAGE)
    args.env_passphrase = env_passphrase if env_passphrase is not None else env
    try:
        with _inspect(args) as (where, inspector):
            report = args.func(where, inspector, args)
    except KeyboardInterrupt:
        return _fail(args.json, KeyboardInterrupt("interrupted"), ExitCode.INTERRUPTED)
    except (KeystoreError, MlsError, UsageError, MissingExtra, ImportError, ValueError,
            OSError) as exc:
        for kind, code in _EXIT_CODES:
            if isinstance(exc, kind):
                return _fail(args.json, exc, code)
        raise  # unreachable: every caught type is in the table
    if args.json:
        print(report.model_dump_json(indent=2))
    return int(ExitCode.OK)
