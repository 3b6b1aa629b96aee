"""Reading back nginx's dump of its configuration (`nginx -T`): the servers of each upstream."""

from __future__ import annotations

import pytest

from ollama_fleet.nginx_config import ConfigError, in_rotation, same_peer, upstream_servers
from ollama_fleet.operations.nginx import drain_problem

pytestmark = pytest.mark.unit


def dump(files: dict[str, str]) -> str:
    return "".join(f"# configuration file {path}:\n{text}\n" for path, text in files.items())


MAIN = "/etc/nginx/nginx.conf"


def test_includes_globs_quotes_and_comments_are_followed() -> None:
    text = dump(
        {
            MAIN: "events {}\nhttp {\n    include /etc/nginx/sites-enabled/*;\n}\n",
            "/etc/nginx/sites-enabled/site.conf": (
                "log_format x '$a \"{\" ${b} }';  # a { in a comment\n"
                "upstream pool_a {\n    zone pool_a 64k;\n    include ollama-fleet/members/a.conf;\n"
                "    include ollama-fleet/members/b.conf;\n}\n"
                'upstream "pool_b" { server 10.0.0.9:443 down; server [FD00::0003]:443; }\n'
                "server { location / { if ($x) { return 200 '}'; } } }\n"
            ),
            "/etc/nginx/ollama-fleet/members/a.conf": "# a\nserver 10.0.0.2:443 max_fails=2 down;\n",
            "/etc/nginx/ollama-fleet/members/b.conf": "server 10.0.0.3:443;\n",
        }
    )
    servers = [(s.upstream, s.address, s.down) for s in upstream_servers(text)]
    assert servers == [
        ("pool_a", "10.0.0.2:443", True),
        ("pool_a", "10.0.0.3:443", False),
        ("pool_b", "10.0.0.9:443", True),
        ("pool_b", "[FD00::0003]:443", False),
    ]
    peers = {"a": "10.0.0.2:443", "b": "10.0.0.3:443", "c": "[fd00::3]:443", "d": "10.0.0.9:443"}
    assert in_rotation(upstream_servers(text), peers) == {
        "b": ["upstream pool_a (/etc/nginx/ollama-fleet/members/b.conf)"],
        "c": ["upstream pool_b (/etc/nginx/sites-enabled/site.conf)"],
    }


def test_a_file_not_dumped_adds_nothing_and_broken_text_is_an_error() -> None:
    # The keys include is left out of what the host sends back: its include resolves to nothing.
    keys = "include /etc/nginx/ollama-fleet/api-keys.conf;"
    text = dump({MAIN: f"http {{ {keys} upstream u {{ server 1.2.3.4; }} }}"})
    assert [s.address for s in upstream_servers(text)] == ["1.2.3.4"]
    with pytest.raises(ConfigError, match="never closed"):
        upstream_servers(dump({MAIN: "http { upstream u { server 1.2.3.4; }"}))
    with pytest.raises(ConfigError, match="no configuration file"):
        upstream_servers("nginx: the configuration file syntax is ok\n")
    assert drain_problem("", {"a": "10.0.0.2:443"}) == (
        "its live configuration could not be read back (no configuration file in nginx -T's output)"
    )


@pytest.mark.parametrize(
    ("written", "peer", "same"),
    [
        ("10.0.0.2:443", "10.0.0.2:443", True),
        ("10.0.0.2", "10.0.0.2:80", True),  # nginx's default port
        ("10.0.0.2:8443", "10.0.0.2:443", False),
        ("[fd00:0::3]:443", "[fd00::3]:443", True),
        ("gpu-1.LAN:443", "gpu-1.lan:443", True),
    ],
)
def test_peers_compare_as_addresses(written: str, peer: str, same: bool) -> None:
    assert same_peer(written, peer) is same
