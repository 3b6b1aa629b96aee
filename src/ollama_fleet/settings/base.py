"""What every settings section shares."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Section(BaseModel):
    """One prefix of flat host data (`nginx_*` -> NginxSettings): unknown fields are typos, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
