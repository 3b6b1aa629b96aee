"""The gateway role: one TLS endpoint in front of the whole fleet (nginx balancing over the hosts' nginx)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ollama_fleet.settings.base import Section
from ollama_fleet.settings.rules import host_names


class GatewaySettings(Section):
    """Set on gateway hosts (the `gateway` inventory group turns `enabled` on), except `drain`, which is set
    on the fleet host to take out of rotation."""

    # None: whether the host is in the inventory group `gateway` (pyinfra data cannot tell a default from a
    # setting, so membership is decided before validation: see ollama_fleet.gateway.with_gateway_group).
    enabled: bool | None = None
    port: int = Field(default=8443, gt=0, lt=65536)  # the gateway's HTTPS port (443 is the host's own API)
    server_names: list[str] = Field(default_factory=list)  # more names clients use; in the certificate
    # Seconds between two reads of a host: Ollama sends no header before a model is loaded and generating.
    read_timeout: int = Field(default=900, ge=600)
    connect_timeout: int = Field(default=5, gt=0)  # a host that does not accept within this is skipped
    max_fails: int = Field(default=2, ge=0)  # failed attempts within fail_timeout that mark a host out
    fail_timeout: int = Field(default=30, gt=0)  # seconds: the window above, and how long it stays out
    keepalive: int = Field(default=8, ge=0)  # idle TLS connections kept open to the hosts, per pool
    # Seconds an idle one stays open: a request that reuses one to a host that vanished without a word
    # waits until the host's side closes or TCP gives up, so keep this short (and under the hosts' 65 s).
    keepalive_timeout: int = Field(default=10, gt=0, lt=65)
    # Cap the requests in flight to each host at its OLLAMA_NUM_PARALLEL (1 when unset); over it the next
    # host is tried, and with all busy the client gets 503. False: no cap (Ollama queues).
    cap_at_num_parallel: bool = True
    # Send a request first to a host that has its model loaded (Ollama's /api/ps, asked by each host's nginx
    # when the gateway asks); none has: to any host. False: least_conn alone.
    prefer_loaded: bool = True
    drain: bool = False  # on a fleet host: the gateways send it nothing (`down`); it keeps serving directly
    # On a gateway host: it serves the gateway only (no Ollama, no API of its own, no models).
    only: bool = False

    @field_validator("server_names")
    @classmethod
    def _server_names(cls, value: list[str]) -> list[str]:
        return host_names(value)
