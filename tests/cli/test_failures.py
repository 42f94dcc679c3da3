"""Failures an operator meets in the first hour: each is one line and a documented code.

Read-only media are real here: as root, the folder is bind-mounted read-only in a
private mount namespace (``unshare -m``), so even root gets ``EROFS``; as another
user, the folder is made ``0555`` for the run.  Where neither works, those tests
skip with the reason.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keystore import Vault, profiles
from keystore.cli import ExitCode
from tests.cli.conftest import (
    FAST,
    PASSPHRASE,
    REPO,
    ROWS,
    Result,
    Runner,
    digest,
    one_clear_line,
    secret_file,
)


@functools.cache
def _read_only_mounts() -> str | None:
    """None when read-only bind mounts work here (as root), else why not."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare(1) and mount(1)"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind -o ro /tmp /tmp && ! touch /tmp/.ro-probe"],
        capture_output=True, check=False,
    )
    if probe.returncode != 0:
        return "read-only bind mounts are not allowed here"
    return None


def _on_read_only(folder: Path, *argv: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run ``argv`` with ``folder`` unwritable for it.

    As root (whom permissions do not stop) the folder is bind-mounted read-only in a
    private mount namespace; as any other user it is simply ``chmod 0555`` for the run.
    """
    environ = {k: v for k, v in os.environ.items() if k != "MLS_KEYSTORE_PASSPHRASE"}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    environ.update(env or {})
    command = " ".join(shlex.quote(str(a)) for a in argv)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            proc = subprocess.run(
                ["sh", "-c", f"exec {command}"], env=environ, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=120, check=False,
                start_new_session=True,
            )
        finally:
            folder.chmod(0o755)
        return Result(proc.returncode, proc.stdout, proc.stderr)
    reason = _read_only_mounts()
    if reason is not None:
        pytest.skip(reason)
    script = f"mount --bind -o ro {shlex.quote(str(folder))} {shlex.quote(str(folder))} " \
             f"&& exec {command}"
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], env=environ, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120, check=False, start_new_session=True,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def ro_vault(tmp_path: Path) -> Path:
    """A vault with ROWS alone in a folder that the tests mount read-only."""
    folder = tmp_path / "media"
    folder.mkdir()
    path = folder / "my.vault"
    with Vault.create(path, PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY) as v:
        for c, k, val in ROWS:
            v.put(c, k, val)
    return path


# ---------------------------------------------------------------------- read-only media


@pytest.mark.parametrize("command", ["status", "stats", "verify", "export"])
def test_a_vault_on_read_only_media_opens_read_only(
    command: str, ro_vault: Path, pwfile: Path, tmp_path: Path
) -> None:
    """status/stats/verify/export read a vault on a read-only mount (no -shm can be made)."""
    before = digest(ro_vault)
    out = tmp_path / "out.export"
    args: list[str | Path] = [sys.executable, "-m", "keystore", command, ro_vault, "--json"]
    if command in ("verify", "export"):
        args += ["--passphrase-file", pwfile]
    if command == "export":
        backup = secret_file(tmp_path / "b.txt", "the backup passphrase\n")
        args += [out, "--backup-passphrase-file", backup, *FAST]
    result = _on_read_only(ro_vault.parent, *args)
    assert result.code == ExitCode.OK, result.err
    assert "Traceback" not in result.err
    report = result.json()
    if command == "status":
        assert report["rows"] == len(ROWS)
    elif command == "stats":
        assert report["total_rows"] == len(ROWS)
    elif command == "verify":
        assert report["ok"] and report["rows_checked"] == len(ROWS)
    else:
        assert report["rows"] == len(ROWS) and out.is_file()
    assert digest(ro_vault) == before


@pytest.mark.parametrize("command", ["stats", "verify"])
def test_a_sqlcipher_vault_on_read_only_media_opens_read_only(
    command: str, tmp_path: Path, pwfile: Path
) -> None:
    """The same for a SQLCipher vault, whose pages need the key before anything is read."""
    pytest.importorskip("sqlcipher3", reason="the [sqlcipher] extra is not installed")
    folder = tmp_path / "media"
    folder.mkdir()
    path = folder / "s.vault"
    with Vault.create(path, PASSPHRASE, kdf=profiles.INSECURE_FOR_TESTS_ONLY,
                      sqlcipher=True) as v:
        for c, k, val in ROWS:
            v.put(c, k, val)
    result = _on_read_only(folder, sys.executable, "-m", "keystore", command, path,
                           "--passphrase-file", pwfile, "--json")
    assert result.code == ExitCode.OK, result.err
    report = result.json()
    assert report.get("total_rows", report.get("rows_checked")) == len(ROWS)


@pytest.mark.parametrize("command", ["init", "import"])
def test_creating_in_a_read_only_folder_is_exit_8_in_one_line(
    command: str, ro_vault: Path, vault_file: Path, pwfile: Path, tmp_path: Path
) -> None:
    """init and import into a read-only folder: exit 8, one line naming the vault, no temp."""
    target = ro_vault.parent / "new.vault"
    if command == "init":
        args: list[str | Path] = ["init", target, "--passphrase-file", pwfile, *FAST]
    else:
        with Vault.open(vault_file, readonly=True) as v:
            v.unlock(PASSPHRASE)
            from keystore.export import export_vault

            export_vault(v, tmp_path / "b.export", PASSPHRASE, profiles.INSECURE_FOR_TESTS_ONLY)
        args = ["import", tmp_path / "b.export", target, "--backup-passphrase-file", pwfile,
                "--passphrase-file", pwfile, *FAST]
    result = _on_read_only(ro_vault.parent, sys.executable, "-m", "keystore", *args)
    assert result.code == ExitCode.IO_ERROR, result.err
    one_clear_line(result.err)
    assert str(target) in result.err and "not writable" in result.err
    assert sorted(p.name for p in ro_vault.parent.iterdir()) == ["my.vault", "my.vault.lock"]


@pytest.mark.parametrize("api", ["Vault.create", "MlsClient.create"])
def test_library_create_in_a_read_only_folder_raises_vault_io_error(
    api: str, ro_vault: Path
) -> None:
    """The public API raises VaultIOError (not sqlite3.OperationalError) naming the vault."""
    target = ro_vault.parent / "lib.vault"
    code = (
        "from keystore import Vault, VaultIOError, profiles\n"
        "from mls import MlsClient\n"
        "try:\n"
        f"    {api}({str(target)!r}, 'library test passphrase', "
        "kdf=profiles.INSECURE_FOR_TESTS_ONLY"
        + (", identity=b'x')\n" if api == "MlsClient.create" else ")\n")
        + "except VaultIOError as exc:\n"
        "    print('VaultIOError', exc)\n"
    )
    result = _on_read_only(ro_vault.parent, sys.executable, "-c", code)
    assert result.code == 0, result.err
    assert result.out.startswith("VaultIOError") and str(target) in result.out, result.out


def test_demo_in_a_read_only_folder_is_exit_8(ro_vault: Path) -> None:
    """The demo in a folder it cannot write: exit 8 and one line, nothing created."""
    result = _on_read_only(
        ro_vault.parent, sys.executable, "-m", "keystore", "demo", ro_vault.parent, *FAST,
        env={"MLS_KEYSTORE_PASSPHRASE": "demo test passphrase"},
    )
    assert result.code == ExitCode.IO_ERROR, result.err
    one_clear_line(result.err)
    assert sorted(p.name for p in ro_vault.parent.iterdir()) == ["my.vault", "my.vault.lock"]


# ---------------------------------------------------------------------- codes and messages


def test_a_missing_vault_and_a_missing_export_have_the_same_code(
    run: Runner, tmp_path: Path, pwfile: Path
) -> None:
    """Both are exit 6 ("not a vault or export"), with a line naming the missing file."""
    missing_vault = run("verify", "absent.vault", "--passphrase-file", pwfile)
    missing_export = run("import", "absent.export", "new.vault", "--passphrase-file", pwfile)
    assert missing_vault.code == missing_export.code == ExitCode.NOT_A_VAULT
    assert "absent.vault" in missing_vault.err and "absent.export" in missing_export.err
    one_clear_line(missing_export.err)


def test_export_into_a_folder_names_the_final_file(
    run: Runner, tmp_path: Path, vault_file: Path, pwfile: Path
) -> None:
    """export VAULT DIR writes DIR/<vault>.export and reports that name, not a temp file."""
    folder = tmp_path / "backups"
    folder.mkdir()
    result = run("export", vault_file, folder, "--passphrase-file", pwfile,
                 "--backup-passphrase-file", pwfile, "--json", *FAST)
    assert result.code == ExitCode.OK, result.err
    final = folder / f"{vault_file.name}.export"
    assert result.json()["destination"] == str(final)
    assert [p.name for p in folder.iterdir()] == [final.name]


@pytest.mark.parametrize("command", ["verify", "stats", "rekey", "export"])
def test_a_raw_key_file_on_a_passphrase_vault_is_refused(
    cli: Runner, tmp_path: Path, vault_file: Path, command: str
) -> None:
    """--raw-key-file is never silently ignored: exit 2 before any prompt or change."""
    key = secret_file(tmp_path / "key.hex", os.urandom(32).hex())
    before = digest(vault_file)
    args: list[str | Path] = [command, vault_file, "--raw-key-file", key]
    if command == "export":
        args.append(tmp_path / "x.export")
    result = cli(*args)
    assert result.code == ExitCode.USAGE, result.err
    assert "protected by a passphrase" in result.err
    assert digest(vault_file) == before


def test_init_with_sqlcipher_missing_is_exit_9(
    cli: Runner, tmp_path: Path, pwfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing extra has its own code (9), not 1 (which means "a failure was found")."""
    from keystore import sqlcipher

    monkeypatch.setattr(sqlcipher, "available", lambda: False)
    result = cli("init", tmp_path / "s.vault", "--sqlcipher", "--passphrase-file", pwfile, *FAST)
    assert result.code == ExitCode.MISSING_EXTRA
    assert "pip install -e '.[sqlcipher]'" in result.err
    assert not (tmp_path / "s.vault").exists()


def test_interrupt_exits_130_in_one_line_and_leaves_no_partial_export(
    cli: Runner, tmp_path: Path, vault_file: Path, pwfile: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C during export: exit 130, one line, no export and no temporary file."""
    from keystore import export

    real = export.write_export

    def interrupted(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_export", interrupted)
    result = cli("export", vault_file, tmp_path / "out.export", "--passphrase-file", pwfile,
                 "--backup-passphrase-file", pwfile, *FAST)
    assert result.code == ExitCode.INTERRUPTED
    one_clear_line(result.err)
    assert not [p for p in tmp_path.iterdir() if "out.export" in p.name]


def _interrupt_demo_when(tmp_path: Path, marker: str) -> tuple[subprocess.CompletedProcess[str],
                                                                 Path]:
    demo = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "MLS_KEYSTORE_PASSPHRASE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["MLS_KEYSTORE_PASSPHRASE"] = "interrupt test passphrase"
    proc = subprocess.Popen(
        [sys.executable, "-m", "keystore", "demo", str(demo)], env=env, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (demo / marker).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), demo


@pytest.mark.parametrize("marker", ["alice.vault", "carol.vault.lock"])
def test_ctrl_c_in_the_demo_exits_130_and_removes_its_folder(tmp_path: Path, marker: str) -> None:
    """Interrupted in-process or with workers running: 130, no traceback, nothing left."""
    result, demo = _interrupt_demo_when(tmp_path, marker)
    if result.returncode == 0:
        pytest.skip("the demo finished before the interrupt arrived")
    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
    assert not demo.exists()


# ---------------------------------------------------------------------- no tracebacks

NO_TRACEBACK = [
    ("missing vault", ["verify", "absent.vault", "--passphrase-file", "{pw}"], 6),
    ("missing export", ["import", "absent.export", "n.vault", "--passphrase-file", "{pw}"], 6),
    ("vault given as export", ["import", "{vault}", "n.vault", "--passphrase-file", "{pw}"], 6),
    ("wrong passphrase", ["verify", "{vault}", "--passphrase-file", "{wrong}"], 3),
    ("weak new passphrase", ["init", "n.vault", "--passphrase-file", "{weak}", *FAST], 2),
    ("raw key on a passphrase vault", ["verify", "{vault}", "--raw-key-file", "{key}"], 2),
    ("unknown command", ["verfy", "{vault}"], 2),
    ("stray argument", ["status", "{vault}", "extra-word"], 2),
    ("init in a missing folder", ["init", "no/such/n.vault", "--passphrase-file", "{pw}"], 8),
    ("export into a missing folder",
     ["export", "{vault}", "no/such/x.export", "--passphrase-file", "{pw}"], 8),
    ("convert onto an existing file", ["convert", "{vault}", "{vault}"], 2),
    ("compact of a missing vault", ["compact", "absent.vault"], 6),
    ("demo with an unknown KDF profile", ["demo", "d", "--kdf-profile", "FAST_PLEASE"], 2),
    ("demo into a file", ["demo", "{vault}"], 2),
]


@pytest.mark.parametrize(
    ("argv", "code"), [case[1:] for case in NO_TRACEBACK], ids=[c[0] for c in NO_TRACEBACK]
)
def test_no_failure_prints_a_traceback(
    run: Runner, tmp_path: Path, vault_file: Path, pwfile: Path, argv: list[str], code: int
) -> None:
    """Each failure an operator can cause: its documented code and exactly one line."""
    files = {
        "pw": pwfile, "vault": vault_file,
        "wrong": secret_file(tmp_path / "wrong.txt", "not the passphrase\n"),
        "weak": secret_file(tmp_path / "weak.txt", "x\n"),
        "key": secret_file(tmp_path / "k.hex", os.urandom(32).hex()),
    }
    before = digest(vault_file)
    result = run(*(a.format(**files) for a in argv), env={
        "MLS_KEYSTORE_PASSPHRASE": "demo test passphrase"} if argv[0] == "demo" else None)
    assert result.code == code, result.err
    one_clear_line(result.err)
    assert digest(vault_file) == before
