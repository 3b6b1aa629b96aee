"""An example fleet on a LAN. Copy it to inventories/<your-fleet>.py, put in your hosts, then:

    export OLLAMA_FLEET_API_KEY_TEAM=...   # or .fleet/secrets.json: {"api_keys": {"team": "..."}}
    pyinfra -y inventories/<your-fleet>.py deploys/ollama.py

Each list below is a pyinfra group; a `(hosts, data)` tuple gives the group's settings, and a host's own
dict overrides them. Defaults for every setting, documented, are in group_data/all.py; settings shared by
the whole fleet can also go in group_data/<group>.py. Every host's settings are validated before any host
is changed.
"""

# Settings every host of this fleet shares (merged into each group below).
_fleet = {
    "ssh_user": "admin",
    "_sudo": True,
    # The LAN whose machines may use the API, and the admin network SSH is allowed from. The deploy itself
    # must run from an admin subnet: it refuses to enable the firewall otherwise.
    "firewall_client_subnets": ["192.168.10.0/24"],
    "firewall_admin_subnets": ["192.168.10.0/28"],
    # Keys by name; their values come from OLLAMA_FLEET_API_KEY_<NAME> or .fleet/secrets.json.
    "auth_key_names": ["team", "ci"],
    # Web apps on the LAN that call the API from a browser.
    "ollama_origins": ["https://chat.example.lan"],
    "ollama_env": {"OLLAMA_KEEP_ALIVE": "30m"},
    # A LAN mirror of the release page (<url>/v<version>/ollama-linux-amd64.tar.zst + sha256sum.txt).
    "ollama_source": "mirror",
    "ollama_mirror_url": "http://mirror.example.lan/ollama",
    # The guide's assistant, built on a pulled base model.
    "models_pull": ["llama3.2:1b"],
    "models_custom": [
        {
            "name": "vehicle-assistant",
            "base": "llama3.2:1b",
            "system": "You are a helpful assistant for questions about vehicles and their maintenance.",
            "parameters": {"temperature": 0.3, "num_ctx": 4096},
        }
    ],
}

# Machines with a GPU: more parallel requests, models kept loaded longer.
gpu_servers = (
    [
        ("gpu-1.example.lan", {"ssh_hostname": "192.168.10.21"}),
        ("gpu-2.example.lan", {"ssh_hostname": "192.168.10.22"}),
    ],
    {**_fleet, "ollama_env": {"OLLAMA_KEEP_ALIVE": "2h", "OLLAMA_NUM_PARALLEL": "4"}},
)

# CPU-only machines: one request at a time; this one also answers under a service name.
cpu_servers = (
    [
        (
            "cpu-1.example.lan",
            {
                "ssh_hostname": "192.168.10.31",
                "nginx_server_names": ["cpu-1.example.lan", "ollama.example.lan"],
            },
        ),
    ],
    {**_fleet, "ollama_env": {"OLLAMA_KEEP_ALIVE": "30m", "OLLAMA_NUM_PARALLEL": "1"}},
)

# Rollouts reach this group first (README: "Roll a change out"); it stays a member of its group above.
canary = ["cpu-1.example.lan"]

# One endpoint for the whole fleet (README: "One endpoint for the fleet"): a small box in the group
# `gateway` that runs the gateway only (no Ollama, no models of its own) and balances over every host
# above by model. Apps use https://llm.example.lan:8443/v1.
gateway_boxes = (
    [("gw-1.example.lan", {"ssh_hostname": "192.168.10.10"})],
    {
        **_fleet,
        "gateway_only": True,
        "gateway_server_names": ["llm.example.lan"],
        "models_pull": [],
        "models_custom": [],
    },
)
gateway = ["gw-1.example.lan"]
