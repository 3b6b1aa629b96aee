"""The system account Ollama runs as, read with one `getent`/`id` command (pyinfra's Users fact reads every
account on the host, with a command per user: a second on each run)."""

from __future__ import annotations

import shlex
from collections.abc import Generator
from dataclasses import dataclass

from pyinfra.api.facts import FactBase
from pyinfra.api.operation import operation
from pyinfra.context import host


@dataclass(frozen=True)
class Account:
    home: str
    shell: str
    group: str  # the primary group's name
    groups: frozenset[str]  # every group it is in, the primary one too


class SystemAccount(FactBase[Account | None]):
    """One account as the host's passwd and group databases have it (None: no such user)."""

    def command(self, user: str) -> str:
        q = shlex.quote(user)
        return f"getent passwd {q} && id -gn {q} && id -Gn {q} || true"

    def process(self, output: list[str]) -> Account | None:
        if len(output) < 3:
            return None
        fields = output[0].split(":")
        return Account(
            home=fields[5], shell=fields[6], group=output[1].strip(), groups=frozenset(output[2].split())
        )


def account_commands(
    user: str, group: str, groups: list[str], home: str, shell: str, have: Account | None
) -> list[str]:
    """The useradd/usermod commands that make `user` a system account as described (none when it is)."""
    q = shlex.quote
    extra = ["--groups", ",".join(groups)] if groups else []
    if have is None:
        argv = ["useradd", "--system", "--gid", group, *extra, "--home-dir", home, "--create-home"]
        return [shlex.join([*argv, "--shell", shell, user])]
    changes = []
    if have.group != group:
        changes += ["--gid", group]
    if have.home != home:
        changes += ["--home", home]
    if have.shell != shell:
        changes += ["--shell", shell]
    missing = [g for g in groups if g not in have.groups]
    if missing:
        changes += ["--append", "--groups", ",".join(missing)]
    return [f"usermod {' '.join(q(c) for c in changes)} {q(user)}"] if changes else []


@operation()
def system_user(
    user: str, group: str, home: str, shell: str, groups: list[str] | None = None
) -> Generator[str, None, None]:
    """
    A system account with its primary group, home (created with it), shell, and at least `groups`.

    + user, group: the account and its primary group (which must exist)
    + home, shell: its home directory and login shell
    + groups: supplementary groups it must be in (others it has are kept)
    """
    commands = account_commands(
        user, group, groups or [], home, shell, host.get_fact(SystemAccount, user=user)
    )
    if not commands:
        host.noop(f"user {user} exists as it must")
    yield from commands
