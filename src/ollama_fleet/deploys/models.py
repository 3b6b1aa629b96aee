"""The models each host serves: GGUF files from the controller, pulls, custom Modelfiles, optional prune."""

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
        model, ref = listed_name(name), model_reference(name)
        manifest_file = posixpath.join(str(s.ollama.models_dir), ref.manifest_path)
        # pyinfra orders operations by where they are called: the seed's pull (and every host's own pull
        # without a seed) comes before the others pull from the seed.
        if not s.fetches_from_seed:
            insecure = s.models.pulls_insecurely(name)
            models.pulled_model(
                name=f"Pull model {model}",
                model=model,
                api=api,
                insecure=insecure,
                pin=s.models.pin(name),
                refresh=s.models.refresh,
                source_manifest_url=ref.manifest_url(insecure),
                manifest_file=manifest_file,
            )
        elif seed:
            address = f"{seed_address(host, seed)}:{s.models.lan_port}"
            models.seeded_model(
                name=f"Pull model {model} from the seed {seed}",
                model=model,
                source=ref.at(address),
                seed_manifest_url=f"http://{address}{ref.manifest_url_path}",
                api=api,
                pin=s.models.pin(name),
                manifest_file=manifest_file,
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
