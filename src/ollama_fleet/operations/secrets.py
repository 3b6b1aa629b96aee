"""Upload a secret file (API keys, TLS private key) without ever showing its content.

pyinfra's `files.put` prints the old and new text of a changed file under `--diff`, and an unnamed
operation lists its arguments in `--json`. This operation compares sha256 digests only, logs no diff, and
takes a `Secret` whose str/repr is a digest, so the content cannot reach pyinfra output by any path.
The file is written to a temporary name created 0600 first, then renamed into place, so it is never
readable by others, not even for a moment.

Under sudo, pyinfra's SFTP writes as the login user to a staging file before root copies it into place, by
default `/tmp/pyinfra-<sha1>` with that user's umask (often world-readable, and left behind when the copy
fails). Secrets are staged in UPLOAD_DIR instead.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from collections.abc import Generator
from io import BytesIO
from typing import Any, TypedDict

from pyinfra.api.command import FileUploadCommand
from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation
from pyinfra.context import host


class Secret:
    """A secret value whose printable form is only a short digest."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._value.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"<secret sha256:{self.sha256[:12]}>"

    __str__ = __repr__


class FileState(TypedDict):
    sha256: str
    mode: int
    user: str
    group: str


class FileDigest(FactBase[FileState | None]):
    """sha256, octal mode, owner and group of a regular file, or None when it does not exist."""

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return f"if [ -f {quoted} ]; then stat -c '%a %U %G' {quoted} && sha256sum {quoted}; fi"

    def process(self, output: list[str]) -> FileState | None:
        if len(output) < 2:
            return None
        mode, user, group = output[0].split()
        return {"sha256": output[1].split()[0], "mode": int(mode, 8), "user": user, "group": group}


def file_matches(current: FileState | None, sha256: str, user: str, group: str, mode: int) -> bool:
    wanted: FileState = {"sha256": sha256, "mode": mode, "user": user, "group": group}
    return current == wanted


UPLOAD_DIR = "/run/ollama-fleet-uploads"
"""The login user's own directory (0700) for staging a secret under sudo: on tmpfs, made afresh for each
upload (so nothing an earlier login user left there is handed over) and removed after it."""


def upload_dir_commands() -> tuple[str, str]:
    """Commands that make UPLOAD_DIR for the SSH login user (root when not under sudo), and remove it."""
    q = shlex.quote(UPLOAD_DIR)
    return f'rm -rf {q} && install -d -m 700 -o "${{SUDO_USER:-$(id -un)}}" {q}', f"rm -rf {q}"


def _new_name(dest: str) -> str:
    return posixpath.join(posixpath.dirname(dest), f".{posixpath.basename(dest)}.ollama-fleet-new")


def _staged(secret: Secret, dest: str, user: str, group: str, mode: int) -> Generator[Any, None, str]:
    """Commands that leave `secret` in a new file beside `dest` with its final owner and mode; returns
    the command that moves it into place."""
    q, temp = shlex.quote, _new_name(dest)
    yield f"mkdir -p {q(posixpath.dirname(dest))}"
    # Created 0600 before any byte arrives: an upload keeps an existing file's mode.
    yield f"rm -f {q(temp)} && install -m 600 /dev/null {q(temp)}"
    make_upload_dir, remove_upload_dir = upload_dir_commands()
    yield make_upload_dir
    staged = posixpath.join(UPLOAD_DIR, posixpath.basename(dest))
    yield FileUploadCommand(BytesIO(secret.reveal().encode()), temp, remote_temp_filename=staged)
    yield remove_upload_dir
    yield f"chown {q(user)}:{q(group)} {q(temp)} && chmod {mode:o} {q(temp)}"
    return f"mv -f {q(temp)} {q(dest)}"


@operation()
def secret_file(
    secret: Secret, dest: str, user: str = "root", group: str = "root", mode: int = 0o600
) -> Generator[Any, None, None]:
    """
    Ensure `dest` holds `secret` with owner/group/mode, comparing digests only (no diff, no content).

    + secret: the content, wrapped so it never prints
    + dest: remote path
    + user, group, mode: ownership and permissions (mode as an int, e.g. 0o640)
    """
    current = host.get_fact(FileDigest, path=dest)
    if file_matches(current, secret.sha256, user, group, mode):
        host.noop(f"secret {dest} is up to date")
        return
    yield (yield from _staged(secret, dest, user, group, mode))


@operation()
def certificate_and_key(cert: str, key: Secret, cert_path: str, key_path: str) -> Generator[Any, None, None]:
    """
    Ensure a TLS certificate (0644) and its private key (0600, never shown) are in place, written together:
    both are staged beside their paths and renamed in one command, so no reader sees one without the other.

    + cert: the certificate chain (PEM)
    + key: its private key (PEM), wrapped so it never prints
    + cert_path, key_path: remote paths
    """
    pair = [(Secret(cert), cert_path, 0o644), (key, key_path, 0o600)]
    if all(
        file_matches(host.get_fact(FileDigest, path=path), wanted.sha256, "root", "root", mode)
        for wanted, path, mode in pair
    ):
        host.noop(f"certificate {cert_path} and key {key_path} are up to date")
        return
    moves = []
    for wanted, path, mode in pair:
        moves.append((yield from _staged(wanted, path, "root", "root", mode)))
    yield " && ".join(moves)
