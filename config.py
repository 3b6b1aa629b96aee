"""pyinfra's run-wide config: pyinfra reads it from the directory it is started in, before the inventory and
before connecting. Every host's SSH connection stays open for the whole run, so a large fleet needs more
open files than a shell's default soft limit: raise it to the hard limit first. Then every host runs at
once, and the run costs the controller less per host (ollama_fleet/pyinfra_run.py, docs/scale.md)."""

from ollama_fleet.limits import prepare_pyinfra_run

prepare_pyinfra_run()
