"""pyinfra deploy file of `ollama-fleet rollout`'s gateway drain (see ollama_fleet.deploys.drain)."""

from ollama_fleet.deploys.drain import drain_at_gateway

drain_at_gateway()
