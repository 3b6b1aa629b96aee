#!/usr/bin/env bash
# From a fresh Debian 12 machine to a verified lab fleet, as root:   bash bootstrap.sh
# It installs what the lab needs (Debian packages, Go for the Ollama build, the project in .venv), builds the
# artifacts (Ollama from source, the tiny model; cached in /var/cache/ollama-fleet), then brings a lab of
# $OLLAMA_FLEET_HOSTS hosts (default 3; Debian 12 unless $OLLAMA_FLEET_LAB_RELEASE names others) up, deploys
# it and verifies it like a client. A second run reuses every installed and cached piece (the lab itself is
# made afresh). `--setup-only` stops before the lab.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

GO_VERSION=1.26.8
# golang.org/toolchain from the Go module proxy (the same bytes `go` itself downloads with GOTOOLCHAIN).
GO_ZIP_SHA256=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
GO_ZIP_URL="https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go${GO_VERSION}.linux-amd64.zip"
GO_ROOT=/usr/local/go

step() { printf '== %s (%ds so far)\n' "$1" "$SECONDS"; }
die() { printf 'bootstrap.sh: %s\n' "$1" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run it as root: the lab makes containers, bridges and nft rules"
[ "$(uname -m)" = x86_64 ] || die "the lab's Ollama build is for x86_64 (this machine is $(uname -m))"
grep -q '^VERSION_CODENAME=bookworm' /etc/os-release || echo "bootstrap.sh: warning: not Debian 12; going on"

step "Debian packages"
read -r -a packages <<< "$(tr '\n' ' ' < .ci/apt-packages)"
packages+=(python3 python3-venv python3-pip unzip git ca-certificates)
missing=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${packages[@]}" 2>&1 | grep -v '^ii ' || true)
if [ -z "$missing" ]; then
    echo "all ${#packages[@]} installed"
else
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${packages[@]}"
fi
# The tests use promtool (prometheus) and mtail's one-shot mode (their daemons have no job here), and
# chromium-headless-shell to open the fleet dashboard (test_metrics).
if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service mtail.service 2>/dev/null || true
fi

step "Go $GO_VERSION"
if [ "$("$GO_ROOT/bin/go" env GOVERSION 2>/dev/null || true)" = "go$GO_VERSION" ]; then
    echo "$GO_ROOT has it"
else
    zip=$(mktemp /tmp/go-toolchain.XXXXXX.zip)
    trap 'rm -f "$zip"' EXIT
    curl -fL --retry 3 -o "$zip" "$GO_ZIP_URL"
    echo "$GO_ZIP_SHA256  $zip" | sha256sum -c --quiet - || die "the Go toolchain's checksum does not match"
    staging=$(mktemp -d /usr/local/.go-new.XXXXXX)
    unzip -q "$zip" -d "$staging"
    rm -rf "$GO_ROOT.old" && { [ ! -e "$GO_ROOT" ] || mv "$GO_ROOT" "$GO_ROOT.old"; }
    mv "$staging/golang.org/toolchain@v0.0.1-go${GO_VERSION}.linux-amd64" "$GO_ROOT"
    rm -rf "$staging" "$GO_ROOT.old"
fi
export PATH="$PWD/.venv/bin:$GO_ROOT/bin:$PATH"

step "the project in .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'

step "artifacts (cold: ~5 min for the Ollama build; then cached)"
ollama-fleet lab build

[ "${1:-}" = "--setup-only" ] && { step "set up"; exit 0; }

step "lab fleet"
# `lab up` writes inventories/lab.py for slot 0, inventories/lab<S>.py for slot S ($OLLAMA_FLEET_LAB_SLOT).
slot=${OLLAMA_FLEET_LAB_SLOT:-0}
inventory=inventories/lab.py; [ "$slot" = 0 ] || inventory="inventories/lab$slot.py"
# Debian 12 hosts by default, as `lab up`'s own default: one base rootfs is the shortest cold path (a second
# release adds its debootstrap, ~2 min, and its mirror packages); the e2e tier's lab runs both releases.
# OLLAMA_FLEET_LAB_RELEASE=trixie (or bookworm,trixie) brings up Debian 13 (or mixed) hosts instead.
ollama-fleet lab up --hosts "${OLLAMA_FLEET_HOSTS:-3}" --release "${OLLAMA_FLEET_LAB_RELEASE:-bookworm}"
pyinfra -y "$inventory" deploys/ollama.py
ollama-fleet verify "$inventory"
step "done: the fleet serves; run every test with .venv/bin/python -m pytest"
