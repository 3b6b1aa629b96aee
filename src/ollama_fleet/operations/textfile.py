"""A small text file (unit, drop-in, script, CA certificate) checked with one command.

pyinfra's `files.put` asks three things of the host on every run (the file, its directory, its sha1), each an
SSH command of ~50 ms on a host with logind sessions; a no-change run of the site had a dozen of them. This
reads sha256, owner and mode in one (`FileDigest`), writes through a temporary file beside the path and
a rename, and under `--diff` shows the change as `files.put` does.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from collections.abc import Generator
from io import BytesIO
from typing import Any

from pyinfra import logger
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.operation import operation
from pyinfra.api.output import format_text
from pyinfra.context import host, state
from pyinfra.facts.files import FileContents
from pyinfra.operations.util.files import generate_color_diff

from ollama_fleet.operations.secrets import FileDigest


def _show_diff(dest: str, text: str, exists: bool) -> None:
    current = [line + "\n" for line in host.get_fact(FileContents, path=dest) or []] if exists else []
    host.log(f"Will {'modify' if exists else 'create'} {format_text(dest, bold=True)}", logger.info)
    for line in generate_color_diff(current, text.splitlines(keepends=True)):
        logger.info("  %s", line)
    logger.info("")


@operation()
def text_file(
    text: str, dest: str, user: str = "root", group: str = "root", mode: int = 0o644
) -> Generator[Any, None, None]:
    """
    Ensure `dest` holds `text` with owner, group and mode.

    + text: the whole content
    + dest: remote path (its directory is made when missing)
    + user, group, mode: ownership and permissions (mode as an int, e.g. 0o644)
    """
    current = host.get_fact(FileDigest, path=dest)
    sha256 = hashlib.sha256(text.encode()).hexdigest()
    owner = f"{shlex.quote(user)}:{shlex.quote(group)}"
    q = shlex.quote
    if current is not None and current["sha256"] == sha256:
        if (current["user"], current["group"], current["mode"]) == (user, group, mode):
            host.noop(f"{dest} is up to date")
            return
        yield f"chown {owner} {q(dest)} && chmod {mode:o} {q(dest)}"
        return
    if state.config.DIFF:
        _show_diff(dest, text, exists=current is not None)
    temp = posixpath.join(posixpath.dirname(dest), f".{posixpath.basename(dest)}.ollama-fleet-new")
    yield f"mkdir -p {q(posixpath.dirname(dest))}"
    yield FileUploadCommand(BytesIO(text.encode()), temp)
    yield f"chown {owner} {q(temp)} && chmod {mode:o} {q(temp)} && mv -f {q(temp)} {q(dest)}"
