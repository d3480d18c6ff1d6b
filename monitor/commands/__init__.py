"""One-shot command-line tools built on the stages (the daemon itself is monitor/daemon.py)."""
