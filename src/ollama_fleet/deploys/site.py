"""The whole site for one host, in dependency order; `deploys/ollama.py` calls `deploy_site()`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pyinfra import logger
from pyinfra.api.operation import OperationMeta
from pyinfra.context import host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import LinuxDistribution

from ollama_fleet import gpu
from ollama_fleet.deploys.fast_rerun import (
    as_last_verified,
    desired_if_fast,
    found_as_verified,
    record_verified,
    verified_state_read,
)
from ollama_fleet.deploys.firewall import firewall
from ollama_fleet.deploys.fleet import FleetError, fleet_settings, host_data, seed_address, settings_for
from ollama_fleet.deploys.health import health_monitoring
from ollama_fleet.deploys.host_state import host_state
from ollama_fleet.deploys.install import install_ollama, prune_old_releases
from ollama_fleet.deploys.metrics import request_metrics
from ollama_fleet.deploys.models import ollama_models
from ollama_fleet.deploys.monitoring import monitoring_role
from ollama_fleet.deploys.proxy import fleet_gateway_plan, nginx_proxy, rollout_drained
from ollama_fleet.deploys.service import api_base, ollama_service, ollama_stopped, rollback_target_for
from ollama_fleet.deploys.tls import TlsPair, tls_material, tls_pair
from ollama_fleet.gateway import GatewayPlan, answers_loaded_check
from ollama_fleet.host_keys import changed_key_message
from ollama_fleet.host_os import host_os, host_os_problems, needs_njs_package_check
from ollama_fleet.host_state import DEPLOY_TEXTFILE
from ollama_fleet.operations import connection, lock, release, ufw
from ollama_fleet.operations.addresses import StableIpv6Addresses
from ollama_fleet.operations.certificates import InstalledCertificate
from ollama_fleet.operations.gpu import GpuDetection, gpu_driver_ready
from ollama_fleet.operations.shell import fail_command
from ollama_fleet.operations.together import FactRequest, forget_planned_facts, planned_fact, read_together
from ollama_fleet.pyinfra_run import read_operation_order_from_frames
from ollama_fleet.render import tls_paths
from ollama_fleet.settings import FleetSettings
from ollama_fleet.settings.paths import pyinfra_inventory_file
from ollama_fleet.state_probe import fast_rerun_blocker
from ollama_fleet.verify.after_deploy import FailureCommand, checked_like_a_client
from ollama_fleet.verify.targets import gateway_target, target_for_settings

# Also for a fleet whose config.py (made by an older `ollama-fleet init`) does not prepare the run.
read_operation_order_from_frames()

_EXPLAINED: set[int] = set()
"""id() of the pyinfra States whose unconnected hosts were explained (the deploy file runs once per host)."""


def explain_refused_hosts() -> None:
    """Name each host pyinfra could not connect to because its SSH host key changed, and the fix: pyinfra's
    own advice (`ssh-keygen -R`) edits ~/.ssh/known_hosts, not the file the inventory pins keys in."""
    run = host.state
    if id(run) in _EXPLAINED:
        return
    _EXPLAINED.add(id(run))
    inventory = str(pyinfra_inventory_file() or "INVENTORY")
    failed = sorted(run.failed_hosts, key=lambda h: h.name)
    # Each probe may wait for a host that is down: all at once (greenlets under pyinfra's gevent).
    with ThreadPoolExecutor(max_workers=32) as pool:
        messages = pool.map(lambda h: changed_key_message(h.name, host_data(h), inventory), failed)
    for message in messages:
        if message:
            logger.error(message)


def deploy_site() -> None:
    """Validate every host's settings (raises before any operation exists), then deploy this host: whole,
    or, when it is exactly as its last verified deploy of the same desired state left it, only checked."""
    s = settings_for(host.state, host.name)
    explain_refused_hosts()
    # Every fact planning needs, in one command (a no-change run is mostly these round trips).
    read_together(host, planning_reads(s))
    try:
        fast, desired, pair, plan, setup = planned(s)
    finally:
        forget_planned_facts(host)
    # One deploy at a time on a host: a second run fails here, before it changes anything. The deploy's
    # record for Prometheus is written in the lock's own commands (one command each way).
    record = str(DEPLOY_TEXTFILE) if s.serves_metrics else None
    lock.deploy_lock_taken(name="Take the deploy lock", holder=lock.this_holder(), record=record)
    rollback_to: str | None = None
    too_wide: list[ufw.ForeignAllow] = []
    if fast:
        found_as_verified()
    else:
        rollback_to, too_wide = whole_deploy(s, pair, plan, setup)
    # Check the host from the controller as a client would; a host that does not work fails the run
    # (and goes back to the release it served before, when this run changed it). A gateway_only host has no
    # API to check, but makes the call all the same: pyinfra orders operations by their place in each
    # host's sequence, so its gateway's check below still comes after every host's own check.
    checked_like_a_client(
        name="Check the host like a client (ollama-fleet verify)",
        target=target_for_settings(s, host.name, host_data(host)) if s.serves_api else None,
        on_failure=failure_command(s, rollback_to),
    )
    if s.is_gateway:
        # After every host's own operations (pyinfra runs each operation on all hosts before the next).
        checked_like_a_client(
            name="Check the fleet's gateway like a client (ollama-fleet verify)",
            target=gateway_target(s, host.name, host_data(host), fleet_settings(host.state).values()),
            on_failure=fail_command,
        )
    if not fast:
        if s.serves_api:
            # Only a verified release may make the previous one go.
            prune_old_releases(s=s)
        # A host with a foreign rule to warn about is not recorded: each run warns again.
        if desired is not None and not too_wide:
            record_verified(s, desired)
    lock.deploy_lock_released(name="Release the deploy lock", holder=lock.this_holder(), record=record)


def planning_reads(s: FleetSettings) -> list[FactRequest]:
    """The facts the planning of this host reads, whatever it then decides."""
    reads: list[FactRequest] = [(LinuxDistribution, {})]
    if s.nginx.enabled and s.tls.mode != "provided":
        if not s.tls.ca_roll:
            reads.append((InstalledCertificate, {"path": str(tls_paths(s).ca)}))
        if s.serves_ipv6:
            reads.append((StableIpv6Addresses, {}))
    if s.serves_api:
        reads.append((GpuDetection, {}))
    if fast_rerun_blocker(s) is None:
        reads.append(verified_state_read(s))
    return reads


def planned(
    s: FleetSettings,
) -> tuple[bool, str | None, TlsPair | None, GatewayPlan | None, gpu.GpuSetup]:
    """Whether the host takes the fast re-run, its desired digest, and what a whole deploy uses."""
    check_host_os(s)
    connection.without_nagle(host)
    # Read once, for the desired digest and for the whole deploy's operations.
    pair = tls_pair(s) if s.nginx.enabled else None
    plan = fleet_gateway_plan(rollout_drained()) if s.is_gateway else None
    setup = host_gpu_setup(s)
    # A GPU the host changed (a card added) changes what a whole deploy would do: not "as last verified".
    desired = desired_if_fast(s, pair, plan, extra=[repr(sorted(setup.items()))])
    fast = desired is not None and as_last_verified(s, desired)
    return fast, desired, pair, plan, setup


def check_host_os(s: FleetSettings) -> None:
    """A host on an OS the deploy does not support, or without the njs its settings need, stops the whole
    run while planning: no operation has run on any host yet."""
    found = host_os(planned_fact(host, LinuxDistribution)["release_meta"])
    loaded_check = answers_loaded_check(s, fleet_settings(host.state).values())
    # dpkg is asked only where njs is missing from the archive and something needs it.
    installed = host.get_fact(DebPackages) if needs_njs_package_check(found, s, loaded_check) else {}
    problem = host_os_problems(host.name, found, s, loaded_check, installed or {})
    if problem:
        raise FleetError(problem)


def host_gpu_setup(s: FleetSettings) -> gpu.GpuSetup:
    """The host's GPUs (read while planning) and what the deploy sets up for them. A host declared to have
    a GPU it cannot use fails in its first operation, before the deploy lock: nothing changes on it."""
    if not s.serves_api:
        return gpu.gpu_setup("none", gpu.empty_report(), s.ollama.arch)
    report = planned_fact(host, GpuDetection)
    for warning in gpu.unused_gpu_warnings(s.gpu.vendor, report):
        logger.warning(f"{host.print_prefix}{warning}")
    gpu_driver_ready(
        name="Check the GPU driver (gpu_vendor)",
        problems=gpu.driver_problems(s.gpu.vendor, report, s.ollama.arch),
    )
    return gpu.gpu_setup(s.gpu.vendor, report, s.ollama.arch)


def whole_deploy(
    s: FleetSettings, pair: TlsPair | None, plan: GatewayPlan | None, setup: gpu.GpuSetup
) -> tuple[str | None, list[ufw.ForeignAllow]]:
    """Every operation, in dependency order; returns the release to roll back to if the check fails, and
    the ufw rules not made by ollama-fleet that open more than the settings (each warned about)."""
    too_wide: list[ufw.ForeignAllow] = []
    if s.firewall.enabled:
        # First: the SSH rule is in place and ufw is on before any port starts listening.
        firewall(s=s, too_wide=too_wide)
    rollback_to: str | None = None
    if s.serves_api and not s.fetches_release_from_seed:
        rollback_to = ollama_installed_and_running(s, setup)
    elif not s.serves_api:
        ollama_stopped()
    if pair is not None:  # nginx is enabled
        reload_nginx_on: list[OperationMeta] = []
        tls_material(s=s, pair=pair, reload_triggers=reload_nginx_on)
        nginx_proxy(s=s, plan=plan, reload_triggers=reload_nginx_on)
        request_metrics(s=s)
    if s.serves_api and s.fetches_release_from_seed:
        # pyinfra runs each operation on every host before the next, in the order of these lines: the
        # seed has fetched the release (above) and serves it from its reloaded nginx before this fetch.
        seed = seed_address(host, s.models.seed_host or "")
        rollback_to = ollama_installed_and_running(s, setup, seed)
    if s.serves_api:
        ollama_models(s=s)
    # Installs the timer, or removes it (health_enabled false, or gateway_only).
    health_monitoring(s=s, gpu_vendors=setup["vendors"])
    # node-exporter and the state writer (metrics on), or their removal.
    host_state(s=s, gpu_vendors=setup["vendors"])
    if s.monitoring.enabled and pair is not None and pair.ca_pem:
        monitoring_role(s=s, ca_pem=pair.ca_pem)
    return rollback_to, too_wide


def ollama_installed_and_running(
    s: FleetSettings, setup: gpu.GpuSetup, seed: str | None = None
) -> str | None:
    """Install the pinned release with the overlays its settings and its GPUs need (`setup`), and (re)start
    Ollama on it; returns the release to roll back to. `seed`: where it fetches the release first."""
    # Read before anything is switched: the release serving now is the one to roll back to.
    rollback_to = rollback_target_for(s)
    restart_ollama_on: list[OperationMeta] = []
    install_ollama(s=s, restart_triggers=restart_ollama_on, overlays=setup["overlays"], seed_address=seed)
    ollama_service(s=s, restart_triggers=restart_ollama_on, rollback_to=rollback_to, setup=setup)
    return rollback_to


def failure_command(s: FleetSettings, rollback_to: str | None) -> FailureCommand:
    """How a host that fails its client check fails: back to `rollback_to` first, when there is one."""

    def command(failure: str) -> str:
        if rollback_to is None:
            return fail_command(failure)
        o = s.ollama
        why = f"failed its client check ({failure})"
        return release.rollback_script(str(o.install_dir), o.version, rollback_to, api_base(s), why, 60)

    return command
