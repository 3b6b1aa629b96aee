"""Models over the LAN: the seed (lab-1) pulls a registry model once, the other hosts get it from the seed.

The registry is the lab mirror's /v2/ (`<mirror>/library/tiny:latest`). The other hosts' route to it is cut
(an iptables REJECT of the mirror's port on each of them) before the deploy, so their copies can come only
from the seed; the mirror's log shows that only the seed asked it for anything. The tiny model's weights are
already on every host (the lab's own `tiny` is created from the same GGUF, so its blob has the same digest):
a host fetches only the blobs it lacks, here the config blob and the manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from verify_fleet import DeployedFleet, deploy_fleet

from ollama_fleet.lab.plan import MIRROR_PORT
from ollama_fleet.lab.state import LabState

pytestmark = pytest.mark.e2e

MODELS_DIR = "/usr/share/ollama/.ollama/models"
FLEET_MODELS = ("tiny:latest", "vehicle-assistant:latest")  # the lab fleet's own models
SEED_LOG = "/var/log/nginx/ollama-fleet-models.access.log"
BLOCK = f"OUTPUT -p tcp --dport {MIRROR_PORT} -j REJECT -m comment --comment ollama-fleet-test-no-registry"


@dataclass(frozen=True)
class Seeded:
    fleet: DeployedFleet
    model: str  # as /api/tags lists it: <mirror>/library/tiny:latest
    registry: str
    mirror_log: Path
    mirror_log_start: int

    @property
    def seed(self) -> str:
        return self.fleet.hosts[0]

    @property
    def others(self) -> list[str]:
        return self.fleet.hosts[1:]

    def settings(self) -> list[str]:
        return [
            "--data", f"models_pull={json.dumps([self.model])}",
            "--data", f"models_insecure_registries={json.dumps([self.registry])}",
            "--data", f"models_seed_host={self.seed}",
            "--data", f"models_lan_subnets={json.dumps([self.fleet.lab.plan.hosts_subnet])}",
        ]  # fmt: skip

    def deploy(self, *extra: str) -> Any:
        return self.fleet.deploy("--json", *self.settings(), *extra)

    def tags(self, host: str) -> dict[str, str]:
        listed = json.loads(self.fleet.ssh_ok(host, "curl -fsS http://127.0.0.1:11434/api/tags"))
        return {model["name"]: model["digest"] for model in listed["models"]}

    def registry_clients(self) -> set[str]:
        """Who asked the upstream registry for anything since the module began."""
        with self.mirror_log.open("rb") as log:
            log.seek(self.mirror_log_start)
            lines = log.read().decode(errors="replace").splitlines()
        return {line.split()[0] for line in lines if '"GET /v2/' in line or '"HEAD /v2/' in line}

    def seed_log(self) -> list[str]:
        return self.fleet.ssh_ok(self.seed, f"cat {SEED_LOG} 2>/dev/null || true").splitlines()

    def manifest(self, host: str) -> dict[str, Any]:
        path = f"{MODELS_DIR}/manifests/{self.model.replace(':latest', '/latest')}"
        document: dict[str, Any] = json.loads(self.fleet.ssh_ok(host, f"cat {path}"))
        return document


def changed(stdout: str) -> dict[str, list[str]]:
    operations = json.loads(stdout)["results"]["operations"]
    return {op["name"]: op["success"] for op in operations if op["success"]}


@pytest.fixture(scope="module")
def seeded(lab: LabState) -> Iterator[Seeded]:
    fleet = deploy_fleet(lab)
    registry = lab.mirror_url.removeprefix("http://")
    mirror_log = Path(lab.key_path).parent / "logs" / "mirror.log"
    setup = Seeded(fleet, f"{registry}/library/tiny:latest", registry, mirror_log, mirror_log.stat().st_size)
    for host in setup.others:
        fleet.ssh_ok(host, f"iptables -I {BLOCK} -d {lab.plan.gateway_ip}")
    try:
        yield setup
    finally:
        for host in fleet.hosts:
            fleet.ssh(host, f"iptables -D {BLOCK} -d {lab.plan.gateway_ip}; ollama rm {setup.model}")


@pytest.fixture(scope="module")
def first(seeded: Seeded) -> Any:
    done = seeded.deploy()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    return done


def test_the_other_hosts_cannot_reach_the_registry(seeded: Seeded, first: Any) -> None:
    for host in seeded.others:
        probe = seeded.fleet.ssh(host, f"curl -sS --max-time 5 http://{seeded.registry}/v2/")
        assert probe.returncode == 7, (host, probe.stderr)  # curl: could not connect (rejected)


def test_every_host_lists_the_model_by_its_usual_name_with_one_digest(seeded: Seeded, first: Any) -> None:
    digests = set()
    for host in seeded.fleet.hosts:
        tags = seeded.tags(host)
        assert seeded.model in tags, (host, sorted(tags))
        assert not [name for name in tags if ":11435/" in name], (host, sorted(tags))  # no seed names left
        digests.add(tags[seeded.model])
    assert len(digests) == 1


def test_only_the_seed_asked_the_registry(seeded: Seeded, first: Any) -> None:
    assert seeded.registry_clients() == {seeded.fleet.address(seeded.seed)}


def test_the_others_fetched_only_the_blobs_they_lacked_from_the_seed(seeded: Seeded, first: Any) -> None:
    manifest = seeded.manifest(seeded.seed)
    weights = manifest["layers"][0]["digest"]
    config = manifest["config"]["digest"]
    log = seeded.seed_log()
    for host in seeded.others:
        mine = [line for line in log if line.startswith(f"{seeded.fleet.address(host)} ")]
        assert any("GET /v2/library/tiny/manifests/latest " in line for line in mine), (host, log)
        assert any(f"/blobs/{config} " in line for line in mine), (host, log)
        assert not any(weights in line for line in mine), (host, mine)  # it had the GGUF's blob already
        assert seeded.manifest(host) == manifest


def test_a_host_chats_with_the_model_it_got_from_the_seed(seeded: Seeded, first: Any) -> None:
    host = seeded.others[-1]
    reply = seeded.fleet.chat(host, seeded.model)
    assert reply.status_code == 200, reply.text


def test_the_seed_port_is_closed_to_everyone_else(seeded: Seeded, first: Any) -> None:
    url = f"http://{seeded.fleet.address(seeded.seed)}:11435/v2/library/tiny/manifests/latest"
    # Positive control: from inside models_lan_subnets (the controller is on the hosts' subnet) the same
    # request gets the manifest, so a failure below is the firewall's doing, not a wrong URL or a dead seed.
    inside = seeded.fleet.run(["curl", "-sS", "--fail", "--max-time", "10", url])
    assert inside.returncode == 0 and json.loads(inside.stdout)["schemaVersion"] == 2, inside.stderr
    outsider = seeded.fleet.lab.outsider_netns
    probe = seeded.fleet.run(["ip", "netns", "exec", outsider, "curl", "-sS", "--max-time", "3", url])
    # ufw drops what its rules do not allow: the connection times out (28), never refused or answered.
    assert probe.returncode == 28, (probe.returncode, probe.stdout, probe.stderr)


def test_the_seed_serves_no_blob_of_a_model_it_does_not_fan_out(seeded: Seeded, first: Any) -> None:
    """A model made on the seed by hand, outside the settings (its system prompt a blob of its own), is in
    the seed's store but not fanned out: a host on the LAN asking for its blobs by digest gets 404, while the
    fanned-out model's blobs are served."""
    seed, host = seeded.seed, seeded.others[-1]
    made = "cat > /root/private.modelfile && ollama create private-notes -f /root/private.modelfile"
    seeded.fleet.ssh_ok(seed, made, stdin=PRIVATE_MODELFILE)
    try:
        private = json.loads(
            seeded.fleet.ssh_ok(
                seed, f"cat {MODELS_DIR}/manifests/registry.ollama.ai/library/private-notes/latest"
            )
        )
        fanned = seeded.manifest(seed)
        fanned_blobs = {layer["digest"] for layer in [fanned["config"], *fanned["layers"]]}
        private_only = {layer["digest"] for layer in [private["config"], *private["layers"]]} - fanned_blobs
        assert private_only  # its system prompt and config at least

        def status(digest: str) -> str:
            url = f"http://{seeded.fleet.address(seed)}:11435/v2/library/tiny/blobs/{digest}"
            return seeded.fleet.ssh_ok(host, f"curl -sS -I -o /dev/null -w '%{{http_code}}' {url}")

        assert {digest: status(digest) for digest in private_only} == dict.fromkeys(private_only, "404")
        assert {digest: status(digest) for digest in fanned_blobs} == dict.fromkeys(fanned_blobs, "200")
    finally:
        seeded.fleet.ssh_ok(seed, "ollama rm private-notes; rm -f /root/private.modelfile")


PRIVATE_MODELFILE = 'FROM tiny:latest\nSYSTEM "Finance only: the merger closes on Friday."\n'


def test_an_identical_deploy_moves_no_model_bytes(seeded: Seeded, first: Any) -> None:
    before = len(seeded.seed_log())
    again = seeded.deploy()
    assert again.returncode == 0, again.stderr[-4000:]
    assert changed(again.stdout) == {}
    # Each host only compares its copies with the seed's manifest digests: small GETs, no pull, no blob.
    new = seeded.seed_log()[before:]
    assert len(new) == len(seeded.others) * (len(FLEET_MODELS) + 1), new  # and the pulled model
    assert all("/manifests/latest " in line and '"curl/' in line for line in new), new


def test_models_the_seed_creates_reach_the_others_from_the_seed(seeded: Seeded, first: Any) -> None:
    """The lab's GGUF model and its Modelfile model: a host without them gets the seed's, not an upload."""
    host = seeded.others[-1]
    for model in ("vehicle-assistant:latest", "tiny:latest"):
        seeded.fleet.ssh_ok(host, f"ollama rm {model}")
    before = len(seeded.seed_log())
    refilled = seeded.deploy("--limit", host)
    assert refilled.returncode == 0, refilled.stderr[-3000:]
    assert sorted(op for op in changed(refilled.stdout) if "Ollama models" in op) == [
        "Ollama models | Pull model tiny:latest from the seed lab-1",
        "Ollama models | Pull model vehicle-assistant:latest from the seed lab-1",
    ]
    fetched = " ".join(seeded.seed_log()[before:])
    for repository in ("local-library/tiny", "local-library/vehicle-assistant"):
        assert f"GET /v2/{repository}/manifests/latest " in fetched
    mine, seeds = seeded.tags(host), seeded.tags(seeded.seed)
    assert [mine[m] for m in FLEET_MODELS] == [seeds[m] for m in FLEET_MODELS]


def test_a_corrupt_blob_at_the_seed_is_refused_and_named(seeded: Seeded, first: Any) -> None:
    host, config = seeded.others[0], seeded.manifest(seeded.seed)["config"]["digest"]
    blob = f"{MODELS_DIR}/blobs/{config.replace(':', '-')}"
    seeded.fleet.ssh_ok(
        seeded.seed, f"cp -p {blob} /root/config.blob && printf X | dd of={blob} conv=notrunc"
    )
    seeded.fleet.ssh_ok(host, f"ollama rm {seeded.model}")
    try:
        refused = seeded.deploy("--limit", host)
        assert refused.returncode != 0
        output = refused.stdout + refused.stderr
        assert re.search(rf"digest mismatch.*{config}", output), output[-3000:]
        assert f"pulling {seeded.model} from the seed as {seeded.fleet.address(seeded.seed)}:11435/" in output
        assert seeded.model not in seeded.tags(host)
    finally:
        seeded.fleet.ssh_ok(seeded.seed, f"cp -p /root/config.blob {blob} && rm /root/config.blob")
    healed = seeded.deploy("--limit", host)
    assert healed.returncode == 0, healed.stderr[-3000:]
    assert seeded.model in seeded.tags(host)


def test_the_registry_digest_pinned_deploys_and_changes_nothing(seeded: Seeded, first: Any) -> None:
    digest = seeded.tags(seeded.seed)[seeded.model]
    pinned = seeded.fleet.deploy(
        "--json",
        *seeded.settings(),
        "--data",
        f"models_pull={json.dumps([f'{seeded.model}@sha256:{digest}'])}",
    )
    assert pinned.returncode == 0, pinned.stderr[-3000:]
    assert changed(pinned.stdout) == {}


def test_a_pin_the_registry_does_not_serve_stops_before_any_host_changes(seeded: Seeded, first: Any) -> None:
    wrong = "sha256:" + "0" * 64
    refused = seeded.fleet.deploy(
        *seeded.settings(), "--data", f"models_pull={json.dumps([f'{seeded.model}@{wrong}'])}"
    )
    assert refused.returncode != 0
    assert "pinned models cannot be deployed; nothing was changed on any host" in refused.stderr
    assert f"not the pinned {wrong}" in refused.stderr and "hosts lab-1" in refused.stderr
    assert "Starting operation" not in refused.stdout + refused.stderr


def test_prune_removes_the_model_and_keeps_the_blobs_other_models_use(seeded: Seeded, first: Any) -> None:
    weights = seeded.manifest(seeded.seed)["layers"][0]["digest"].replace(":", "-")
    pruned = seeded.fleet.deploy("--json", "--data", "models_prune=true")
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert sorted(changed(pruned.stdout)["Ollama models | Remove unlisted models"]) == seeded.fleet.hosts
    for host in seeded.fleet.hosts:
        assert seeded.model not in seeded.tags(host)
        assert "tiny:latest" in seeded.tags(host)  # the lab's own tiny: the same weights blob
        seeded.fleet.ssh_ok(host, f"test -s {MODELS_DIR}/blobs/{weights}")
    reply = seeded.fleet.chat(seeded.others[0], "tiny")
    assert reply.status_code == 200, reply.text


def test_without_a_seed_the_seed_port_is_gone(seeded: Seeded, first: Any) -> None:
    rules = seeded.fleet.ssh_ok(seeded.seed, "ufw show added")
    assert "11435" not in rules
    listening = seeded.fleet.ssh_ok(seeded.seed, "ss -ltnH")
    assert ":11435 " not in listening
