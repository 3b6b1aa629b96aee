"""pyinfra deploy file of `ollama-fleet rollback`: each host back to its previous installed Ollama release."""

from ollama_fleet.deploys.rollback import roll_back_one_release

roll_back_one_release()
