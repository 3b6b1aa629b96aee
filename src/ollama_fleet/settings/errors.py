"""How bad settings are reported: the host, the flat key the user wrote, the bad value and the fix."""

from __future__ import annotations


class SettingsError(Exception):
    """Bad settings for one host: names the host, the key, the bad value and the fix."""

    def __init__(self, host: str, problems: list[str]) -> None:
        self.host = host
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid settings for host {host!r}:\n{lines}")


def closest(key: str, choices: list[str]) -> str:
    """A hint for a mistyped key: the nearest known one, else the list."""
    from difflib import get_close_matches

    close = get_close_matches(key, choices, n=1)
    return f"did you mean {close[0]}?" if close else f"known keys: {', '.join(choices)}"
