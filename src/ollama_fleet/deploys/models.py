"""The models each host serves: GGUF files from the controller, pulls, custom Modelfiles, optional prune."""

from __future__ import annotations

from pyinfra.api.deploy import deploy
from pyinfra.context import host

from ollama_fleet.deploys.fleet import each, seed_address
from ollama_fleet.deploys.service import api_base
from ollama_fleet.operations import models
from ollama_fleet.render import render_modelfile, seed_name
from ollama_fleet.settings import FleetSettings, listed_name


@deploy("Ollama models")
def ollama_models(s: FleetSettings) -> None:
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
    seed = s.models.seed_host
    for name in each(s.models.pull):
        # pyinfra orders operations by where they are called: the seed's pull (and every host's own pull
        # without a seed) comes before the others pull from the seed.
        if not s.fetches_from_seed:
            models.pulled_model(
                name=f"Pull model {listed_name(name)}",
                model=listed_name(name),
                api=api,
                insecure=s.models.pulls_insecurely(name),
            )
        elif seed:
            models.seeded_model(
                name=f"Pull model {listed_name(name)} from the seed {seed}",
                model=listed_name(name),
                source=seed_name(s, name, seed_address(host, seed)),
                api=api,
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
    if s.models.prune:
        models.unlisted_models_removed(name="Remove unlisted models", keep=s.models.names(), api=api)
