"""The Debian releases a lab host can run, and which host gets which: `lab up --release bookworm,trixie`
alternates them over the hosts (lab-1 bookworm, lab-2 trixie, lab-3 bookworm, ...)."""

from __future__ import annotations

RELEASES = {"bookworm": "Debian 12", "trixie": "Debian 13"}
"""Codename -> what /etc/os-release calls it. Each has its own cached base rootfs and mirror repository."""

DEFAULT_RELEASE = "bookworm"
"""What `lab up` boots without --release: the release every lab host ran before releases were selectable."""

RELEASES_ENV = "OLLAMA_FLEET_LAB_RELEASE"
"""The e2e tier's choice (same syntax as --release)."""


class ReleaseError(ValueError):
    pass


def parse_releases(text: str | None) -> list[str]:
    """`bookworm`, `trixie` or a comma list assigned to hosts in turn; empty or None: the default."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in RELEASES]
    if unknown:
        known = ", ".join(f"{name} ({label})" for name, label in RELEASES.items())
        raise ReleaseError(f"unknown lab release {', '.join(unknown)}: the lab boots {known}")
    return names or [DEFAULT_RELEASE]


def release_of_host(releases: list[str], index: int) -> str:
    """The release of host `index` (1-based): the list taken in turn."""
    return releases[(index - 1) % len(releases)]
