"""The models each host serves: GGUF files from the controller, pulls, custom Modelfiles, optional prune;
or, on a host with a seed (models_seed_host), every one of them as the seed has it, over the LAN."""

from __future__ import annotations

import posixpath

from pyinfra.api.deploy import deploy
from pyinfra.context import host

from ollama_fleet.deploys.fleet import each, seed_address
from ollama_fleet.deploys.service import api_base
from ollama_fleet.operations import models
from ollama_fleet.render import render_modelfile
from ollama_fleet.settings import FleetSettings, listed_name
from ollama_fleet.settings.rules import model_reference


@deploy("Ollama models")
def ollama_models(s: FleetSettings) -> None:
    if not s.fetches_from_seed:
        _own_models(s)
    if s.models.seed_host:
        # pyinfra runs one operation at a time on every host, in an order that keeps each host's sequence:
        # an operation every host of the seed shares puts all the seed's work before any pull from it.
        models.seed_models_ready(name=f"The models of the seed {s.models.seed_host} are ready")
    if s.fetches_from_seed:
        _models_from_seed(s)
    if s.models.prune:
        models.unlisted_models_removed(name="Remove unlisted models", keep=s.models.names(), api=api_base(s))


def _own_models(s: FleetSettings) -> None:
    """GGUF files uploaded from the controller, pulls from the registry, Modelfiles built here."""
    api = api_base(s)
    api_host = api.removeprefix("http://")
    base_digests = {}
    for name, path in each(sorted(s.models.gguf.items())):
        base_digests[name] = models.file_sha256(path)
        models.gguf_model(
            name=f"Create model {listed_name(name)} from {path.name}",
            model=listed_name(name),
            gguf=path,
            api=api,
            api_host=api_host,
        )
    for name in each(s.models.pull):
        ref, insecure = model_reference(name), s.models.pulls_insecurely(name)
        models.pulled_model(
            name=f"Pull model {listed_name(name)}",
            model=listed_name(name),
            api=api,
            insecure=insecure,
            pin=s.models.pin(name),
            refresh=s.models.refresh,
            source_manifest_url=ref.manifest_url(insecure),
            manifest_file=posixpath.join(str(s.ollama.models_dir), ref.manifest_path),
            stall_seconds=s.models.pull_stall_timeout,
        )
    for custom in each(s.models.custom):
        modelfile = render_modelfile(s, custom)
        models.custom_model(
            name=f"Create model {listed_name(custom.name)} from its Modelfile",
            model=listed_name(custom.name),
            modelfile=modelfile,
            digest=models.modelfile_digest(modelfile, base_digests.get(custom.base)),
            api=api,
            api_host=api_host,
        )


def _models_from_seed(s: FleetSettings) -> None:
    """Every model as the seed has it, over the LAN: nothing is uploaded from the controller or pulled from
    the registry."""
    seed = s.models.seed_host
    assert seed is not None
    address = f"{seed_address(host, seed)}:{s.models.lan_port}"
    for name, local in each(s.models.fanned_out()):
        ref = model_reference(name)
        lan = ref.on_lan(local)
        models.seeded_model(
            name=f"Pull model {listed_name(name)} from the seed {seed}",
            model=listed_name(name),
            source=lan.at(address),
            seed_manifest_url=f"http://{address}{lan.manifest_url_path}",
            api=api_base(s),
            pin=s.models.pin(name),
            manifest_file=posixpath.join(str(s.ollama.models_dir), ref.manifest_path),
            stall_seconds=s.models.pull_stall_timeout,
        )
