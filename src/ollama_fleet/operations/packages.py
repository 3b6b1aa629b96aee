"""apt packages installed without an `apt-get update` on every run.

`apt.packages(update=True)` refreshes the index each time (a change on every run, and network traffic);
`cache_time` relies on a stamp file Debian does not keep. Here the index is refreshed only when a
package is actually missing, so a second run yields no command at all.
"""

from __future__ import annotations

import shlex
from collections.abc import Generator

from pyinfra.api.operation import operation
from pyinfra.context import host
from pyinfra.facts.apt import noninteractive_apt
from pyinfra.facts.deb import DebPackages


@operation()
def packages_installed(packages: list[str], recommends: bool = True) -> Generator[str, None, None]:
    """
    Ensure Debian packages are installed, refreshing the apt index only if one is missing.

    + packages: package names
    + recommends: also install what they recommend (apt's default)
    """
    installed = host.get_fact(DebPackages)
    missing = [name for name in packages if name not in installed]
    if not missing:
        host.noop(f"installed: {', '.join(packages)}")
        return
    yield noninteractive_apt("update")
    options = "" if recommends else "--no-install-recommends "
    yield noninteractive_apt("install " + options + " ".join(shlex.quote(name) for name in missing))
