"""What the checks of one host share: results, the HTTP client, and the context a check runs in."""

from __future__ import annotations

import ssl
import sys
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

from ollama_fleet.settings import FleetSettings
from ollama_fleet.verify import probes
from ollama_fleet.verify.generation import (
    GenerationPlan,
    loaded_from_ps,
    max_loaded_models,
    plan_generation,
)
from ollama_fleet.verify.reasons import CheckFailed, explain_status, explain_transport
from ollama_fleet.verify.targets import Target


def _load_httpcore() -> None:
    """Import httpcore (httpx loads it lazily) so that it works under gevent's monkey patching.

    pyinfra patches the whole process with gevent (so does `verify` once it loads an inventory), which
    removes select.epoll. httpcore probes for trio on import, and trio, where installed, then dies with an
    AttributeError that httpcore does not catch. Hiding trio for that one import makes httpcore use its
    thread-based primitives, which is what a synchronous client needs anyway.
    """
    if "httpcore" in sys.modules or "trio" in sys.modules:
        return
    sys.modules["trio"] = None  # type: ignore[assignment]  # `import trio` now raises ImportError
    try:
        import httpcore  # noqa: F401
    finally:
        del sys.modules["trio"]


_load_httpcore()


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    BLOCKED = "blocked"  # not run: something it needs failed earlier (counts as not passing)
    # Does not apply to this host's settings (the feature is off, or there is nothing to probe: the outsider
    # probe outside the lab, scopes with no inference key): nothing was proven. Not a failure by default;
    # `verify --strict` counts it as one.
    NA = "n/a"


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    figure: str = ""
    reason: str = ""
    seconds: float = 0.0
    metrics: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Not a failure: passed, or not applicable (which proved nothing: counted apart in the report)."""
        return self.status in (Status.PASS, Status.NA)


def passed(figure: str, **metrics: float | int | str) -> CheckResult:
    return CheckResult("", Status.PASS, figure=figure, metrics=metrics)


def not_applicable(figure: str) -> CheckResult:
    return CheckResult("", Status.NA, figure=figure)


@dataclass
class HostContext:
    """What the checks of one host share: the client, the key found to work, what is established."""

    target: Target
    client: httpx.Client
    timeout: float
    key: str | None = None
    established: set[str] = field(default_factory=set)
    # The positive control's round trip per address, measured once for the checks that probe closed ports.
    _control_rtts: dict[str, float | None] = field(default_factory=dict, repr=False)
    # Looked up when the context is made, not when this module is imported: `verify` gevent-patches threading
    # only when it loads the inventory, and a real lock held across a greenlet's connect blocks them all.
    _control_lock: threading.Lock = field(default_factory=lambda: threading.Lock(), repr=False)
    # Generations in flight on the host, at most OLLAMA_NUM_PARALLEL: Ollama would queue the rest, and a
    # request queued behind another's generation can run out its timeout (seen: chat behind a 64-token
    # stream on a busy host). Waiting here does not count against the request's timeout.
    _generation_slots: threading.Semaphore | None = field(default=None, repr=False)
    _plan: GenerationPlan | None = field(default=None, repr=False)
    _plan_lock: threading.Lock = field(default_factory=lambda: threading.Lock(), repr=False)
    # Set by check_host: one event per check it runs, set when the check has ended (whatever its outcome).
    ended: dict[str, threading.Event] = field(default_factory=dict, repr=False)
    # What the stream check's generation answered (its text), for `chat`: one generation serves both.
    streamed_text: str | None = None
    stream_problem: str = ""

    @property
    def settings(self) -> FleetSettings:
        return self.target.settings

    def configured_keys(self) -> list[tuple[str, str]]:
        """The API's keys; a `metrics` key reaches /metrics only, never the API these checks call."""
        auth = self.settings.auth
        api_keys = [k for k in auth.keys if auth.policy(k.name).scope != "metrics"]
        return [(k.name, k.key.get_secret_value()) for k in api_keys]

    def refused_keys(self) -> list[tuple[str, str]]:
        """Keys the host must answer 401 to: ungranted or revoked in the secrets file."""
        configured = {key for _, key in self.configured_keys()}
        refused = [(k.name, k.key.get_secret_value()) for k in self.settings.auth.refused_keys]
        return [(name, key) for name, key in refused if key not in configured]

    def dropped_port_wait(self, address: str, shown: str) -> tuple[float, float]:
        """How long a probe of a port that must be dropped at `address` waits, and the control's round trip
        it comes from (probes.closed_port_timeout). The control is a TCP connect to the port clients use,
        from this controller: if it is not answered, silence elsewhere proves nothing and the check fails."""
        with self._control_lock:  # raw_port and plain_http ask at once: one control per address
            if address not in self._control_rtts:
                self._control_rtts[address] = probes.control_rtt(address, self.target.port)
            rtt = self._control_rtts[address]
        if rtt is None:
            raise CheckFailed(
                f"the positive control failed: port {self.target.port} of {shown} did not accept a "
                "connection, so a port that stays silent there proves nothing; check that the host is up "
                "and reachable"
            )
        return probes.closed_port_timeout(rtt, self.timeout), rtt

    def generation_slot(self) -> threading.Semaphore:
        with self._control_lock:
            if self._generation_slots is None:
                self._generation_slots = threading.Semaphore(self.settings.num_parallel)
            return self._generation_slots

    def generation_plan(self) -> GenerationPlan:
        """Which models chat and stream generate on and which they only show (verify/generation.py), from
        one look at /api/ps shared by both checks. A gateway's /api/ps is one host's at random, and the
        gateway sends a model first to a host that has it loaded: there every model is generated."""
        with self._plan_lock:  # its own lock: the dropped-port controls do not wait for /api/ps
            if self._plan is None:
                self._plan = self._make_plan()
            return self._plan

    def _make_plan(self) -> GenerationPlan:
        models = self.target.models
        if self.target.is_gateway:
            return GenerationPlan(models[0] if models else None, tuple(models), (), ())
        response = self.request("GET", "/api/ps", key=self.key)
        if response.status_code != 200:
            raise CheckFailed(explain_status(response.status_code, response.text, "GET /api/ps"))
        try:
            loaded = loaded_from_ps(response.json())
        except ValueError:
            raise CheckFailed(f"GET /api/ps answered 200 but not JSON: {response.text[:120]!r}") from None
        s = self.settings
        return plan_generation(
            models,
            loaded,
            s.models.runner_mates(),
            max_loaded_models(s.ollama.env),
            vram_decides=s.gpu.vendor in ("nvidia", "amd"),
        )

    def wait_for(self, check: str) -> bool:
        """Wait until `check` has ended; False when this run does not include it."""
        event = self.ended.get(check)
        if event is None:
            return False
        event.wait()
        return True

    def auth_header(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def request(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        """One request; transport failures become CheckFailed with an actionable reason."""
        headers = {**self.auth_header(key), **kwargs.pop("headers", {})}
        try:
            return self.client.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            reason = explain_transport(exc, self.target.address, self.target.port, f"{method} {path}")
            raise CheckFailed(reason) from None

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request with the working key that must answer 200 with JSON."""
        response = self.request(method, path, key=self.key, **kwargs)
        if response.status_code != 200:
            raise CheckFailed(explain_status(response.status_code, response.text, f"{method} {path}"))
        try:
            return response.json()
        except ValueError:
            raise CheckFailed(f"{method} {path} answered 200 but not JSON: {response.text[:120]!r}") from None


def make_client(target: Target, timeout: float) -> httpx.Client:
    verify: ssl.SSLContext | bool = False
    if target.https:
        ca = target.ca_file
        verify = probes.client_ssl_context(ca if ca and ca.is_file() else None)
    return httpx.Client(
        base_url=target.base_url,
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        trust_env=False,  # never route through a proxy from the environment: talk to the host itself
        headers={"User-Agent": "ollama-fleet-verify"},
    )
