"""`ollama-fleet doctor`: the troubleshooting guide as a command. Each host is read over SSH with one script
(what it runs is printed with `--show-commands`), and `diagnose` turns what it printed into findings, each
naming what is wrong and how to fix it. Pure: `probe_script` and `diagnose`; the rest runs them.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ollama_fleet.settings import FleetSettings
from ollama_fleet.verify.status import ssh_argv
from ollama_fleet.verify.targets import Target

SSH_TIMEOUT = 60.0
MIN_FREE_MB = 1024  # where models live: less is a finding (a pull or a model load would fail)
MAX_USED_PERCENT = 95
LOAD_ERRORS = r"error loading model|llama runner process has terminated|failed to load model|out of memory"
RECORD = "/var/lib/ollama-fleet/verified-state"


@dataclass(frozen=True)
class Finding:
    what: str
    fix: str


@dataclass
class Diagnosis:
    host: str
    findings: list[Finding] = field(default_factory=list)
    unreachable: str | None = None

    @property
    def healthy(self) -> bool:
        return not self.findings and self.unreachable is None


def probe_script(s: FleetSettings) -> dict[str, str]:
    """Section name -> the shell command whose output `diagnose` reads (each runs on its own)."""
    o = s.ollama
    models = shlex.quote(str(o.models_dir))
    return {
        "ollama_active": "systemctl is-active ollama.service",
        "ollama_pid": "systemctl show -p MainPID --value ollama.service",
        "listener": f"ss -ltnpH 'sport = :{o.listen_port}'",
        "models_dir": f"stat -c '%U %G %a' {models}",
        "disk": f"df -Pm {models} | tail -1",
        # Since Ollama last started: what it logged before a restart is history.
        "load_errors": (
            "journalctl --no-pager -q _SYSTEMD_INVOCATION_ID=$(systemctl show -p InvocationID --value "
            f"ollama.service) | grep -E '{LOAD_ERRORS}' | tail -3"
        ),
        "nginx_active": "systemctl is-active nginx.service",
        "nginx_test": "nginx -t 2>&1 | tail -2",
        # The last 10 minutes' worst lines (nginx stamps each line `YYYY/MM/DD HH:MM:SS`).
        "nginx_errors": (
            "since=$(date -d '-10 min' '+%Y/%m/%d %H:%M:%S'); tail -500 /var/log/nginx/error.log 2>/dev/null "
            "| awk -v s=\"$since\" '($1 \" \" $2) >= s' | grep -E '\\[(emerg|alert|crit)\\]' | tail -3"
        ),
        "ufw": "ufw status 2>/dev/null | head -1",
        "last_deploy": f"stat -c %Y {RECORD} 2>/dev/null; date +%s",
    }


def remote_command(sections: dict[str, str]) -> str:
    """One command that prints each section's output between markers (errors included)."""
    return "; ".join(f"echo '### {name}'; {{ {command}; }} 2>&1" for name, command in sections.items())


def split_sections(output: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


Output = dict[str, list[str]]


def _first(out: Output, name: str) -> str:
    return next(iter(out.get(name, [])), "").strip()


def _lines(out: Output, name: str) -> list[str]:
    return [line.strip() for line in out.get(name, []) if line.strip()]


def ollama_findings(s: FleetSettings, out: Output) -> list[Finding]:
    o, found = s.ollama, []
    pid = _first(out, "ollama_pid")
    ours = f"pid={pid}," if pid not in ("", "0") else None
    foreign = [line for line in _lines(out, "listener") if not (ours and ours in line)]
    if foreign:
        taker = foreign[0].split("users:", 1)[-1].strip()
        found.append(
            Finding(
                f"Ollama's port {o.listen_port} is taken by another process: {taker}",
                "stop that process, then: systemctl restart ollama; or set ollama_listen to a free port",
            )
        )
    active = _first(out, "ollama_active")
    if active != "active":
        found.append(
            Finding(f"ollama.service is {active or 'unknown'}", "journalctl -u ollama -n 50 says why")
        )
    for line in _lines(out, "load_errors"):
        found.append(Finding(f"a model failed since Ollama started: {line[-200:]}", "journalctl -u ollama"))
    return found


def models_dir_findings(s: FleetSettings, out: Output) -> list[Finding]:
    o, found = s.ollama, []
    owner = _first(out, "models_dir").split()
    if len(owner) != 3:
        found.append(Finding(f"{o.models_dir} cannot be read: {_first(out, 'models_dir')}", "deploy again"))
    elif (owner[0], owner[1]) != (o.user, o.group):
        found.append(
            Finding(
                f"the models directory {o.models_dir} is owned by {owner[0]}:{owner[1]}, not "
                f"{o.user}:{o.group}",
                f"chown -R {o.user}:{o.group} {o.models_dir} (a deploy does it too)",
            )
        )
    disk = _first(out, "disk").split()  # Filesystem 1M-blocks Used Available Capacity Mounted-on
    if len(disk) >= 6 and disk[3].isdigit():
        free, used = int(disk[3]), int(disk[4].rstrip("%") or 0)
        if free < MIN_FREE_MB or used > MAX_USED_PERCENT:
            found.append(
                Finding(
                    f"{free} MB free ({used}% used) on {disk[5]}, where models live ({o.models_dir})",
                    "free space there, or set ollama_models_dir to a larger disk and deploy",
                )
            )
    return found


def proxy_findings(s: FleetSettings, out: Output) -> list[Finding]:
    found = []
    if s.nginx.enabled:
        active = _first(out, "nginx_active")
        if active != "active":
            found.append(Finding(f"nginx.service is {active or 'unknown'}", "journalctl -u nginx -n 50"))
        test = " ".join(_lines(out, "nginx_test"))
        if "test is successful" not in test:
            found.append(Finding(f"nginx -t fails: {test[-200:]}", "fix the file it names, or deploy again"))
        for line in _lines(out, "nginx_errors"):
            found.append(Finding(f"nginx logged: {line[-200:]}", "see /var/log/nginx/error.log"))
    if s.firewall.enabled and _first(out, "ufw") != "Status: active":
        ufw = _first(out, "ufw") or "no answer"
        found.append(Finding(f"ufw is not active ({ufw})", "deploy (it enables ufw, the SSH rule first)"))
    return found


def diagnose(host: str, s: FleetSettings, output: str) -> Diagnosis:
    out = split_sections(output)
    result = Diagnosis(host)
    if s.serves_api:
        result.findings += ollama_findings(s, out) + models_dir_findings(s, out)
    result.findings += proxy_findings(s, out)
    if len([line for line in _lines(out, "last_deploy") if line.isdigit()]) < 2:
        result.findings.append(
            Finding("no deploy of this host passed its client check yet", "pyinfra -y INVENTORY deploy.py")
        )
    return result


def examine(target: Target) -> Diagnosis:
    command = remote_command(probe_script(target.settings))
    try:
        done = subprocess.run(
            ssh_argv(target, command), capture_output=True, text=True, timeout=SSH_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Diagnosis(target.name, unreachable=f"ssh failed: {exc}")
    if done.returncode == 255:
        return Diagnosis(target.name, unreachable=f"ssh failed: {done.stderr.strip()[-200:]}")
    return diagnose(target.name, target.settings, done.stdout)


def examine_fleet(targets: Sequence[Target]) -> list[Diagnosis]:
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as pool:
        return list(pool.map(examine, targets))


def render(diagnoses: Sequence[Diagnosis]) -> str:
    lines = []
    for d in diagnoses:
        if d.unreachable:
            lines.append(f"{d.host}: UNREACHABLE: {d.unreachable}")
        elif not d.findings:
            lines.append(f"{d.host}: ok (nothing wrong found)")
        for f in d.findings:
            lines.append(f"{d.host}: {f.what}\n  fix: {f.fix}")
    return "\n".join(lines)


def to_json(diagnoses: Sequence[Diagnosis]) -> str:
    return json.dumps(
        {
            "ok": all(d.healthy for d in diagnoses),
            "hosts": [
                {
                    "host": d.host,
                    "ok": d.healthy,
                    "unreachable": d.unreachable,
                    "findings": [{"what": f.what, "fix": f.fix} for f in d.findings],
                }
                for d in diagnoses
            ],
        },
        indent=2,
    )
