"""pyinfra inventory of lab slot 10: written by `ollama-fleet lab up`, removed by `lab down`."""

_ssh = {'ssh_user': 'root', 'ssh_key': '/work/main/.lab/slot10/id_ed25519', 'ssh_known_hosts_file': '/dev/null', 'ssh_strict_host_key_checking': 'no'}
_lab = {'ollama_source': 'mirror', 'ollama_mirror_url': 'http://10.213.20.1:8080/ollama', 'ollama_origins': ['https://app.lab.example'], 'firewall_client_subnets': ['10.213.20.0/24'], 'firewall_admin_subnets': ['10.213.20.0/24'], 'auth_key_names': ['ci', 'ops'], 'auth_secrets_file': '/work/main/.lab/slot10/secrets.json', 'tls_ca_dir': '/work/main/.lab/slot10/pki', 'models_gguf': {'tiny': '/var/cache/ollama-fleet/artifacts/models/tiny-llama.gguf'}, 'models_custom': [{'name': 'vehicle-assistant', 'base': 'tiny', 'system': 'You answer questions about vehicles.', 'parameters': {'num_predict': 16, 'temperature': 0.2}}], 'lab_outsider_ip': '10.213.21.2', 'lab_outsider_netns': 'ollama-fleet-lab10-outsider'}

lab_canary = [
    ("lab-1", {"ssh_hostname": "10.213.20.11", **_ssh, **_lab}),
]
lab_rest = [
    ("lab-2", {"ssh_hostname": "10.213.20.12", **_ssh, **_lab}),
    ("lab-3", {"ssh_hostname": "10.213.20.13", **_ssh, **_lab}),
    ("lab-4", {"ssh_hostname": "10.213.20.14", **_ssh, **_lab}),
    ("lab-5", {"ssh_hostname": "10.213.20.15", **_ssh, **_lab}),
    ("lab-6", {"ssh_hostname": "10.213.20.16", **_ssh, **_lab}),
    ("lab-7", {"ssh_hostname": "10.213.20.17", **_ssh, **_lab}),
    ("lab-8", {"ssh_hostname": "10.213.20.18", **_ssh, **_lab}),
]
lab_hosts = lab_canary + lab_rest
