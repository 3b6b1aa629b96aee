"""The fast re-run: what a host is and what the deploy would make of it, each as one digest (pure).

A full deploy asks a host some fifty questions, one SSH command each, and pyinfra plans each of its forty
operations. When the host is exactly as the last verified deploy left it (its state digest, from one
command, equals the one that deploy recorded) and this run would deploy the same thing (the same desired
digest: every host's settings with their secrets, the certificate, the GGUF files, this code and its
templates), that full deploy would change nothing, so the run only checks the host like a client.

The state digest covers more than the deploy manages (all of /etc/nginx, both ufw rule files, every file of
the releases, the process start times): anything else that moves there costs a full run, never a missed one.
Any write by a deploy changes a file's mtime, so a run cut off half way never looks like the recorded state.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from ollama_fleet.gpu import MODULES_LOAD_PATH, NODES_UNIT_PATH
from ollama_fleet.health import SERVICE, TIMER, UNIT_DIR
from ollama_fleet.render import OLLAMA_BIN, RELEASE_STORE
from ollama_fleet.settings import FleetSettings

RECORD_PATH = "/var/lib/ollama-fleet/verified-state"
UNITS = (
    "ollama.service",
    "nginx.service",
    TIMER,
    "mtail.service",
    "prometheus-node-exporter.service",  # the host's state (deploys/host_state.py)
    "ollama-fleet-state.timer",
    # the monitoring role's (deploys/monitoring.py)
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-blackbox-exporter.service",
)
PACKAGES = (
    "ufw",
    "curl",
    "ca-certificates",
    "zstd",
    "nginx",
    "libnginx-mod-http-js",
    "python3",
    "mtail",
    "prometheus-node-exporter",
)
# Whose every file is read (sha256) besides its metadata: small configuration trees.
CONTENT_PATHS = (
    "/etc/systemd/system/ollama.service",
    "/etc/systemd/system/ollama.service.d",
    NODES_UNIT_PATH,  # GPU hosts (gpu.py)
    MODULES_LOAD_PATH,
    str(UNIT_DIR / SERVICE),
    str(UNIT_DIR / TIMER),
    "/etc/nginx",
    "/etc/ollama-fleet",
    "/usr/share/ollama-fleet",
    "/usr/local/lib/ollama-fleet",
    "/var/lib/ollama-fleet/models",
    "/etc/default/ufw",
    "/etc/ufw",
    "/etc/mtail",  # metrics (deploys/metrics.py)
    "/etc/default/mtail",
    "/etc/default/prometheus-node-exporter",  # the host's state (deploys/host_state.py)
    "/etc/systemd/system/ollama-fleet-state.service",
    "/etc/systemd/system/ollama-fleet-state.timer",
    "/etc/prometheus",  # the monitoring role (deploys/monitoring.py)
    "/etc/default/prometheus",
    "/etc/default/prometheus-alertmanager",
    "/etc/default/prometheus-blackbox-exporter",
)
# Not SubState: a timer is "running" while the health check it started runs.
UNIT_PROPERTIES = (
    "Id,LoadState,ActiveState,UnitFileState,MainPID,ExecMainStartTimestampMonotonic,"
    "ActiveEnterTimestampMonotonic,NeedDaemonReload,FragmentPath,DropInPaths"
)


def fast_rerun_blocker(s: FleetSettings) -> str | None:
    """Why this host always gets the whole deploy, or None: a model whose content this controller does not
    know (an unpinned pull, a refresh, a seed's copy) must be asked of its source on every run."""
    if not s.deploy.fast_rerun:
        return "deploy_fast_rerun is false"
    if s.models.refresh:
        return "models_refresh asks the registry on every run"
    if any(s.models.pin(name) is None for name in s.models.pull):
        return "unpinned models_pull entries are compared with the registry on every run"
    if s.fetches_from_seed:
        return f"its models come from the seed {s.models.seed_host}"
    return None


def probe_script(s: FleetSettings) -> str:
    """One command printing the sha256 of everything a deploy of this host reads there."""
    o = s.ollama
    models = shlex.quote(str(o.models_dir))
    listed = " ".join(
        shlex.quote(p)
        for p in (
            *CONTENT_PATHS,
            str(o.install_dir),
            str(RELEASE_STORE),
            str(OLLAMA_BIN),
            str(o.home / ".ollama"),
        )
    )
    content = " ".join([*(shlex.quote(p) for p in CONTENT_PATHS), f"{models}/manifests"])
    parts = [
        f"find {listed} {models}/manifests {models}/blobs -xdev -printf '%p %y %m %u %g %s %T@ %l\\n' 2>&1 "
        "| LC_ALL=C sort",
        f"find {content} -xdev -type f -print0 2>&1 | LC_ALL=C sort -z | xargs -0r sha256sum",
        f"getent passwd {shlex.quote(o.user)}; getent group {shlex.quote(o.group)} render video; "
        f"id {shlex.quote(o.user)}",
        f"dpkg-query -W -f='${{Package}} ${{Version}} ${{db:Status-Abbrev}}\\n' {' '.join(PACKAGES)}",
        # the units, then the binary Ollama runs (the first MainPID is ollama.service's)
        f'units=$(systemctl show -p {UNIT_PROPERTIES} {" ".join(UNITS)}); echo "$units"; '
        "readlink /proc/$(echo \"$units\" | sed -n 's/^MainPID=//p' | head -1)/exe",
        # master and workers; not the old workers a reload left finishing their requests
        "ps -C nginx -o pid=,lstart=,args= | grep -v 'is shutting down'",
        "iptables -w -S ufw-user-input; ip6tables -w -S ufw6-user-input; iptables -w -S INPUT; "
        "ip6tables -w -S INPUT",
    ]
    # Each part's errors are part of the state too (a missing file, a stopped service).
    each = "; ".join(f"echo '## {i}'; {{ {part}; }} 2>&1" for i, part in enumerate(parts))
    return f"{{ {each}; }} | sha256sum | cut -d' ' -f1"


def desired_digest(parts: Iterable[str]) -> str:
    """One digest of everything this run would deploy to a host (each part a text)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part.encode()).digest())
    return digest.hexdigest()


def settings_text(s: FleetSettings) -> str:
    """Every setting of a host, secrets included (a rotated key is a change), as canonical JSON."""
    return json.dumps(_plain(s), sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return value


@functools.cache
def code_digest(*template_dirs: Path) -> str:
    """The package's own code and templates and the operator's template directories: new code is a change."""
    package = Path(__file__).parent
    roots = [package, *template_dirs]
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".pyc"):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
