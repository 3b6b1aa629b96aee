"""ollama-fleet: Ollama as a secure, OpenAI-compatible service on a fleet of LAN hosts."""

__version__ = "0.1.0"
