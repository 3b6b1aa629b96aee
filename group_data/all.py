"""Defaults for every host: each setting of ollama-fleet, its default value and what it means.

pyinfra loads this file for the `all` group (from `group_data/` next to where pyinfra runs, or beside the
inventory). Override a key for a group in `group_data/<group>.py` or for one host in the inventory; host
data wins over group data, which wins over this file. The values here are exactly the defaults of
src/ollama_fleet/settings.py (a unit test keeps the two in step). Plain data only: paths are strings.
Every key is validated for every host before any host is changed.
"""

# --- ollama_*: which Ollama to install, from where, and how it runs ---------------------------------------
# Release to install, as on the release page without the leading "v".
ollama_version = "0.24.0"
# CPU architecture of the hosts: "amd64" or "arm64".
ollama_arch = "amd64"
# Archive format of the release: "auto" (what the release page of ollama_version has: "tar.zst" from 0.14.0,
# "tgz" before), or either of those; hosts get zstd when it is "tar.zst".
ollama_archive_format = "auto"
# Archives unpacked over the main one into the same release directory, each checked like it and rolled back
# with it: "rocm" (AMD GPUs, amd64), "jetpack5"/"jetpack6" (Jetson, arm64), "mlx" (MLX's CUDA 13 runner).
ollama_overlays = []
# Where hosts get the archive and its sha256sum.txt: "release" (ollama_release_url), "mirror"
# (ollama_mirror_url, same layout: <url>/v<version>/<archive>) or "controller" (uploaded from
# ollama_controller_dir, for air-gapped LANs). The archive is always checked against sha256sum.txt first.
ollama_source = "release"
# Base URL of the official releases.
ollama_release_url = "https://github.com/ollama/ollama/releases/download"
# Base URL of a LAN mirror (required when ollama_source is "mirror").
ollama_mirror_url = None
# Directory on the controller holding the archive and sha256sum.txt (required for "controller").
ollama_controller_dir = None
# With a models_seed_host (and a "release" or "mirror" source), the seed fetches each archive once, keeps it
# and serves it on models_lan_port; the other hosts fetch it from there (the release page when the seed has
# none, e.g. in a run the seed is not part of) and check its digest before they unpack it.
ollama_via_seed = True
# Before any host changes, the controller asks the release page (or mirror) for each archive: a 404 stops the
# run. A controller that cannot reach it (or --dry) leaves the check to the hosts.
ollama_check_url = True
# Versions are unpacked to <install_dir>/<version>, with <install_dir>/current pointing at the one in use.
ollama_install_dir = "/opt/ollama"
# How many versions to keep installed, counting the current one (older ones are removed; >= 1).
ollama_keep_versions = 2
# Trusted archive digests, "<version>/<archive>" -> sha256 (e.g. "0.24.0/ollama-linux-amd64.tar.zst"): checked
# instead of the release's sha256sum.txt, which comes from the same place as the archive.
ollama_sha256 = {}
# System user and group that run `ollama serve` (created like the official installer does).
ollama_user = "ollama"
ollama_group = "ollama"
# systemd sandboxing of ollama.service (ollama.service.d/hardening.conf): read-only system, writable only
# ollama_home and ollama_models_dir, no capabilities, no privilege gain; GPU devices stay reachable.
ollama_hardening = True
# Home directory of that user.
ollama_home = "/usr/share/ollama"
# Where Ollama stores models (OLLAMA_MODELS), owned by ollama_user.
ollama_models_dir = "/usr/share/ollama/.ollama/models"
# Address Ollama listens on (OLLAMA_HOST). Must be loopback while nginx_enabled: nginx is the only way in.
ollama_listen = "127.0.0.1:11434"
# Extra CORS origins (OLLAMA_ORIGINS), each with a scheme, e.g. ["https://chat.example.lan"]; nginx
# answers browser preflights for the same list.
ollama_origins = []
# Other OLLAMA_* variables for the service's drop-in, e.g. {"OLLAMA_KEEP_ALIVE": "30m"}; unknown names,
# removed variables and values Ollama would misread are rejected.
ollama_env = {}
# Ollama's cloud: models named `...:cloud` run on ollama.com (the prompt leaves the LAN, signed with the
# host's Ollama key), plus web search and start-up fetches from ollama.com. Off (the default): the drop-in
# sets OLLAMA_NO_CLOUD=1 and nginx refuses any request naming a cloud model (403 cloud_disabled).
ollama_cloud = False

# --- nginx_*: the TLS reverse proxy in front of Ollama ----------------------------------------------------
# Serve the API through nginx (TLS, API keys, CORS). Off: no proxy and no firewall port for clients.
nginx_enabled = True
# HTTPS port.
nginx_https_port = 443
# Answer plain HTTP on nginx_http_port with a redirect to HTTPS (and open it in ufw). Off by default: a
# client configured with http:// would send its key in clear before it sees the redirect.
nginx_http_redirect = False
nginx_http_port = 80
# server_name values and certificate DNS names; empty means the host's inventory name.
nginx_server_names = []
# Seconds nginx waits between two reads/writes of Ollama (model loads, long generations); >= 600.
nginx_read_timeout = 900
nginx_send_timeout = 900
# Seconds to connect to Ollama.
nginx_connect_timeout = 10
# Largest model upload (/api/blobs, admin keys only), an nginx size like "64g"; "0" means no limit.
nginx_client_max_body_size = "64g"
# Largest body of any other request (chat, embeddings, images as base64), e.g. "32m"; over it: 413.
nginx_api_max_body_size = "32m"
# Strict-Transport-Security max-age in seconds (browsers then refuse plain HTTP and certificate
# click-throughs for the host's DNS names); 0 sends no HSTS header.
nginx_hsts_max_age = 31536000
# Template file name of the site, looked up in nginx_template_dirs first, then in the built-in templates.
nginx_site_template = "nginx-site.conf.j2"
# Directories on the controller with templates that override the built-in ones by file name.
nginx_template_dirs = []

# --- tls_*: certificates -----------------------------------------------------------------------------------
# "fleet_ca": a CA created once on the controller issues each host a certificate (SANs: names and IP);
# "provided": tls_cert_file and tls_key_file per host.
tls_mode = "fleet_ca"
# Directory on the controller holding the fleet CA and the issued host keys (git-ignored; keys 0600).
# Every relative path on the controller (this one, auth_secrets_file, tls_cert_file, tls_key_file,
# ollama_controller_dir, nginx_template_dirs, models_gguf) is relative to the fleet root: the inventory's
# directory, or its parent when that is named `inventories`; never the directory pyinfra is started from.
tls_ca_dir = ".fleet/pki"
# Replace the CA the hosts carry with the one in tls_ca_dir (a new one if it is empty): set it for one run
# only (`--data tls_ca_roll=true`). Unset, a deploy whose CA is not the hosts' stops before any change,
# naming both CA fingerprints; every client must be given the new ca.pem after a roll.
tls_ca_roll = False
# What a new fleet CA may sign for (critical X.509 name constraints, so a stolen CA key cannot impersonate
# other sites): DNS names or domains (a domain holds every name below it) and IP networks. Empty: derived
# when the CA is made from every host's names, server names, extra SANs, service address (a name of three
# labels or more stands for its domain) and firewall_client_subnets. An existing CA keeps its own; widening
# them, or constraining an older CA, takes a roll: `ollama-fleet ca roll inventory.py`.
tls_ca_name_constraints = []
# Certificate chain and private key on the controller, for tls_mode "provided".
tls_cert_file = None
tls_key_file = None
# More names or IPs for the certificate, e.g. ["ollama.example.lan"].
tls_extra_sans = []
# Validity of an issued host certificate in days; more than tls_renew_before_days (else every deploy would
# reissue it).
tls_cert_days = 397
# Reissue a host certificate when it expires within this many days.
tls_renew_before_days = 30
# Directory on the hosts for fullchain.pem, privkey.pem (0600) and ca.pem.
tls_remote_dir = "/etc/ollama-fleet/tls"

# --- auth_*: API keys checked by nginx (Authorization: Bearer <key>) ---------------------------------------
# Require a key for the API.
auth_enabled = True
# Names of the keys. The keys themselves never go in inventory files: each comes from the environment
# variable OLLAMA_FLEET_API_KEY_<NAME> or from auth_secrets_file.
auth_key_names = []
# Git-ignored JSON file on the controller: {"api_keys": {"<name>": "<key>"}}.
auth_secrets_file = ".fleet/secrets.json"
# Let GET /health answer without a key (for monitors).
auth_health_open = True
# Scope of a key auth_key_policies does not name: "inference" (chat, completions, embeddings, /v1/models,
# /api/tags, /api/show, /api/version, /api/ps) or "admin" (everything: pull, push, create, delete, copy,
# blob uploads). A key gets 403 naming its scope on any other path.
auth_default_scope = "inference"
# Per key: {"ci": {"scope": "admin"}, "webapp": {"rate": "60r/m", "burst": 10, "concurrency": 4}}.
# rate (nginx limit_req, e.g. "5r/s") and concurrency (requests in flight) answer 429 when exceeded;
# models (e.g. ["llama3.2:1b"]) is the only models the key may name (403 model_not_allowed otherwise; needs
# njs, which the deploy installs: libnginx-mod-http-js).
auth_key_policies = {}

# --- firewall_*: ufw on each host --------------------------------------------------------------------------
# Manage ufw: deny incoming, allow SSH from admin subnets and the API ports from client subnets.
firewall_enabled = True
# Subnets that may use the API (HTTPS and the HTTP redirect), e.g. ["192.168.1.0/24"]; required when enabled.
# An IPv6 subnet here makes nginx listen on [::] too and puts the host's IPv6 addresses in its certificate.
firewall_client_subnets = []
# Subnets that may reach SSH; required when enabled, and must hold the address you deploy from.
firewall_admin_subnets = []
# SSH port to allow from the admin subnets; the deploy refuses to enable ufw when its own SSH connection
# arrives on another port.
firewall_ssh_port = 22
# Rules ollama-fleet did not make that open the API, SSH or Ollama's port wider than the settings (e.g. an
# `allow 443` from anywhere) are warned about on every run; true deletes them.
firewall_remove_foreign_rules = False

# --- models_*: the models each host serves -----------------------------------------------------------------
# Registry models to pull, e.g. ["llama3.2:1b"] (the hosts must reach the registry).
models_pull = []
# Models created from GGUF files on the controller: {"name": "/path/on/controller/model.gguf"}.
models_gguf = {}
# Models built from a Modelfile template: [{"name": "vehicle-assistant", "base": "llama3.2:1b",
# "system": "...", "parameters": {"temperature": 0.2}}]; re-created only when their Modelfile changes.
models_custom = []
# Delete models that none of the three lists above names.
models_prune = False
# Registries (host:port, as written in models_pull names) that serve plain http, e.g. a LAN mirror:
# ["10.0.0.5:8080"]. Ollama refuses http unless told; everything else is pulled over https.
models_insecure_registries = []
# A models_pull entry may pin the manifest digest it must have: "llama3.2:1b@sha256:<64 hex>" (the digest
# /api/tags shows). A pinned model never changes silently: the controller checks the registry still serves
# that digest before any host changes. An unpinned model is pulled once; when its registry later serves
# another digest the deploy warns, and with models_refresh = True pulls it again (only new blobs move).
models_refresh = False
# Fetch each registry model once for the fleet: the host named here (an inventory name) pulls models_pull
# from the registry and serves them to the other hosts on models_lan_port (Ollama's registry API over plain
# http, read-only, open in ufw to models_lan_subnets only); the others pull from it over the LAN (Ollama
# checks every blob's sha256) and list the model under its usual name. None: each host pulls for itself.
models_seed_host = None
# The port the seed serves models on.
models_lan_port = 11435
# Required on the seed: the subnets of the hosts that fetch from it, e.g. ["192.168.10.0/24"].
models_lan_subnets = []
# A pull fails as stalled when the bytes it has done stop growing for this many seconds (read from Ollama's
# own progress: Ollama keeps sending progress lines, and retrying, while its registry sends nothing).
models_pull_stall_timeout = 600

# --- health_*: the on-host health timer --------------------------------------------------------------------
# Install a systemd timer that checks the local API and logs to the journal.
health_enabled = True
# How often it runs (a systemd time span).
health_interval = "1min"
# Seconds before one check gives up.
health_timeout_seconds = 10

# --- gateway_*: one endpoint for the whole fleet -----------------------------------------------------------
# Hosts in the inventory group `gateway` (one or two; they may serve models too) get a second nginx server:
# one TLS endpoint (fleet CA certificate), the same keys and scopes, balancing (least_conn, keepalive) over
# the hosts' own nginx over TLS (checked against the fleet CA), a request for a model sent only to hosts
# serving it, failing over to another host before any byte reached the client. None: membership of that
# group decides; True or False (for a group or a host) overrides it.
gateway_enabled = None
# The gateway's HTTPS port (the host's own API keeps nginx_https_port).
gateway_port = 8443
# More names clients call the gateway by, e.g. ["llm.example.lan"]; they go into its certificate.
gateway_server_names = []
# Seconds between two reads of a host (>= 600): Ollama sends nothing before the model is loaded.
gateway_read_timeout = 900
# Seconds to connect to a host before the next one is tried.
gateway_connect_timeout = 5
# Failed attempts (down, refused, 502/503 before the first byte) within gateway_fail_timeout seconds that
# take a host out of rotation for gateway_fail_timeout seconds (passive health); 0: never.
gateway_max_fails = 2
gateway_fail_timeout = 30
# Idle TLS connections each gateway keeps open to the hosts of one model (a pool per model).
gateway_keepalive = 8
# Seconds such a connection stays idle before it is closed (< 65, the hosts' own). A request that reuses one
# to a host gone silent (powered off) waits until TCP gives up on it; new connections fail over after
# gateway_connect_timeout.
gateway_keepalive_timeout = 10
# Send each host at most OLLAMA_NUM_PARALLEL requests at once for each model (1 when unset; Ollama's own
# limit is per model too); with every host of a model busy the client gets 503 (retry). False: no cap,
# Ollama queues (OLLAMA_MAX_QUEUE).
gateway_cap_at_num_parallel = True
# Send a request first to a host that has its model loaded (Ollama's /api/ps, which each host's nginx reads
# when the gateway asks: a host without it answers 404 at once and the next is tried); with none loaded, to
# any host (least_conn). Saves a model load (seconds, and evicting another model) on every cold host it
# would have picked. False: least_conn alone.
gateway_prefer_loaded = True
# Set on a fleet host (not on the gateway): the gateways send it nothing (`down`); it still serves directly.
gateway_drain = False
# Set on a gateway host that should serve the gateway only: no Ollama (stopped and disabled if installed,
# its releases and models left on disk), no API port of its own, no models_*, no health timer.
gateway_only = False

# --- deploy_*: how a run goes about a host --------------------------------------------------------------
# A host exactly as its last verified deploy left it (one state read, compared with what that deploy
# recorded), given the same settings, code and certificate, gets only the quick client check; anything else
# (a file edited, a service stopped, a setting changed) and it gets the whole deploy. False: always the whole.
deploy_fast_rerun = True

# --- service_*: where the fleet reaches a host -------------------------------------------------------------
# The host's address for the fleet and its clients (an IP, IPv6 too, or a DNS name) when it differs from
# ssh_hostname (SSH over a management network, say): the gateways dial it, the hosts fetch models from the
# seed there, verify calls it, the certificate names it. None: ssh_hostname, else the inventory name.
service_address = None

# --- gpu_*: the GPU a host serves from (docs/gpu.md) ------------------------------------------------------
# auto: set up the NVIDIA and AMD GPUs whose driver is loaded (a host without one deploys as a CPU host, with
# a warning when a GPU lacks its driver); "nvidia" or "amd": the host must serve from that GPU, and a deploy
# fails before changing it when the driver is missing, naming the Debian packages; "none": no GPU setup.
gpu_vendor = "auto"
# The health timer restarts Ollama when a GPU host's loaded models run on the CPU (as after a resume).
gpu_restart_on_cpu_fallback = False

# --- metrics_*: per-request metrics for Prometheus (docs/metrics.md) ---------------------------------------
# nginx logs each request's key name (never its value), model, route, status, time to first token and
# tokens; mtail (Debian's package) turns that log into Prometheus series served at https://HOST/metrics, to
# a key with the `metrics` scope (auth_key_policies, e.g. {"monitor": {"scope": "metrics"}}).
metrics_enabled = True
# Where /metrics may be asked from, besides the key: e.g. the monitoring hosts' subnet; empty: anywhere the
# firewall lets in. With auth_enabled false nobody else may read it (no key to ask for).
metrics_subnets = []

# --- monitoring_*: Prometheus, Alertmanager and the blackbox exporter (docs/metrics.md) ---------------------
# Hosts in the inventory group `monitoring` run them (None: the group decides; True or False overrides).
# They scrape every host's /metrics and probe its /health over TLS (fleet CA), on loopback-only ports:
# reach them with `ssh -L 9090:localhost:9090 -L 9093:localhost:9093 HOST`.
monitoring_enabled = None
# The key Prometheus sends to /metrics: one with the metrics scope that every host lists in auth_key_names.
monitoring_metrics_key = None
# Scrape, probe and rule evaluation interval: with 15s a stopped Ollama fires its alert in about a minute.
monitoring_scrape_interval = "15s"
# Alertmanager's receiver: a webhook URL taking its JSON. None: alerts stay in Alertmanager, sent nowhere.
monitoring_alert_webhook_url = None
