"""The lab: a throwaway local fleet of systemd-nspawn hosts with a LAN mirror (`ollama-fleet lab ...`)."""
