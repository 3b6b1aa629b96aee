"""On-host health monitoring (a systemd timer), and the client-side verification that ends every deploy.

Two entry points for the site deploy:
- `health_monitoring(s)`: installs ollama-fleet-health.{service,timer} and the check script; files change
  only when their rendered text does, and systemd is reloaded/restarted only through `_if=...did_change`.
- `verify_after_deploy(s, timeout=...)`: the site's LAST step. Adds one operation that runs on the
  controller after every other operation of the host and checks the host exactly like `ollama-fleet verify`
  (TLS, keys, models, chat, streaming, CORS, firewall); it raises, failing the deploy, when any check fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import StringIO
from pathlib import PurePosixPath

import jinja2
from pyinfra import logger
from pyinfra.api.deploy import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import host
from pyinfra.operations import files, python, systemd
from pyinfra.operations.util import any_changed

from ollama_fleet.operations import packages
from ollama_fleet.render import builtin_templates_dir, systemd_quote
from ollama_fleet.settings import FleetSettings

TAG = "ollama-fleet-health"
SERVICE = f"{TAG}.service"
TIMER = f"{TAG}.timer"
UNIT_DIR = PurePosixPath("/etc/systemd/system")
SCRIPT_PATH = PurePosixPath("/usr/local/lib/ollama-fleet/health-check.py")
VERIFY_TIMEOUT = 120.0  # seconds per request: right after a deploy the first chat may load the model


@dataclass(frozen=True)
class HealthFile:
    path: PurePosixPath
    text: str
    mode: str


def render_health_files(s: FleetSettings) -> list[HealthFile]:
    """The check script and its service and timer units (pure: settings in, text out)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*s.nginx.template_dirs, builtin_templates_dir()]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["systemd_quote"] = systemd_quote
    context = {
        "s": s,
        "script_path": SCRIPT_PATH,
        "base_url": f"http://{_loopback(s.ollama.listen_host)}:{s.ollama.listen_port}",
        "models": s.models.names(),
        "timeout": s.health.timeout_seconds,
    }

    def render(name: str) -> str:
        return env.get_template(f"health/{name}.j2").render(**context)

    return [
        HealthFile(SCRIPT_PATH, render(f"{TAG}.py"), "755"),
        HealthFile(UNIT_DIR / SERVICE, render(SERVICE), "644"),
        HealthFile(UNIT_DIR / TIMER, render(TIMER), "644"),
    ]


def _loopback(listen_host: str) -> str:
    """Where the check reaches Ollama from the host itself."""
    if listen_host in ("", "0.0.0.0", "localhost"):
        return "127.0.0.1"
    if listen_host == "::":
        return "[::1]"
    return f"[{listen_host}]" if ":" in listen_host else listen_host


@deploy("Ollama health timer")
def health_monitoring(s: FleetSettings) -> None:
    """Install (or, when health_enabled is false, remove) the health check timer."""
    if not s.health.enabled:
        _remove_health_monitoring()
        return
    packages.packages_installed(name="Install python3 for the health check", packages=["python3"])
    files.directory(name=f"Create {SCRIPT_PATH.parent}", path=str(SCRIPT_PATH.parent), mode="755")
    changed = [
        files.put(
            name=f"Write {item.path}",
            src=StringIO(item.text),
            dest=str(item.path),
            user="root",
            group="root",
            mode=item.mode,
        )
        for item in render_health_files(s)
    ]
    systemd.daemon_reload(name="Reload systemd for the health units", _if=any_changed(changed[1], changed[2]))
    systemd.service(name=f"Enable and start {TIMER}", service=TIMER, running=True, enabled=True)
    systemd.service(
        name=f"Restart {TIMER} for its new schedule",
        service=TIMER,
        restarted=True,
        _if=changed[2].did_change,
    )


def _remove_health_monitoring() -> None:
    systemd.service(name=f"Stop and disable {TIMER}", service=TIMER, running=False, enabled=False)
    removed = [
        files.file(name=f"Remove {path}", path=str(path), present=False)
        for path in (UNIT_DIR / TIMER, UNIT_DIR / SERVICE, SCRIPT_PATH)
    ]
    systemd.daemon_reload(name="Reload systemd after removing the health units", _if=removed[0].did_change)


class VerifyFailed(PyinfraError):
    """The deployed host does not work for clients; the message lists each failed check and its reason."""


def verify_after_deploy(s: FleetSettings, timeout: float = VERIFY_TIMEOUT) -> None:
    """Add the deploy's last operation: check this host like a client, fail the deploy if any check fails.

    Call it at the end of the site deploy, once per host (the deploy file runs per host). Stable interface:
    `verify_after_deploy(settings, timeout=seconds_per_request)`; it adds a `python.call` that runs on the
    controller when the host's earlier operations have run (never in --dry), named "Verify ..." so a re-run
    can tell it apart from operations that change hosts.
    """
    from ollama_fleet.verify.targets import target_for_settings

    data = host.data.dict()  # type: ignore[no-untyped-call]  # untyped in pyinfra 3.10
    target = target_for_settings(s, host.name, data)
    python.call(
        name="Verify the host like a client (ollama-fleet verify)",
        function=_verify_or_raise,
        target=target,
        timeout=timeout,
    )


def _verify_or_raise(target: object, timeout: float) -> None:
    from ollama_fleet.verify.checks import check_host
    from ollama_fleet.verify.report import progress_line, redact
    from ollama_fleet.verify.targets import Target

    assert isinstance(target, Target)
    secrets = [key.key.get_secret_value() for key in target.settings.auth.keys]
    results = check_host(target, timeout)
    for result in results:
        logger.info(redact(progress_line(target.name, result), secrets))
    failed = [r for r in results if not r.ok]
    if failed:
        lines = "\n".join(f"  {r.check}: {r.status}: {r.reason}" for r in failed)
        raise VerifyFailed(redact(f"{target.name} does not work for clients:\n{lines}", secrets))
