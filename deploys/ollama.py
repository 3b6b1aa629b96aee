"""The whole ollama-fleet site: `pyinfra -y inventories/<fleet>.py deploys/ollama.py`.

Every host's settings are validated before any operation is added for any host; then each host gets
ufw, the pinned Ollama release, its service, TLS, the nginx proxy, its models and the health timer,
and the deploy ends by checking each host as a client would.
"""

from ollama_fleet.deploys import deploy_site

deploy_site()
