"""Certificates installed on a host, as the host holds them."""

from __future__ import annotations

import shlex

from pyinfra.api.facts import FactBase


class InstalledCertificate(FactBase[str | None]):
    """The PEM text of a certificate file on the host (e.g. the fleet CA nginx was given), or None when the
    file is missing or holds no certificate."""

    @staticmethod
    def default() -> str | None:
        return None

    def command(self, path: str) -> str:
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        text = "\n".join(output).strip()
        return text + "\n" if "-----BEGIN CERTIFICATE-----" in text else None
