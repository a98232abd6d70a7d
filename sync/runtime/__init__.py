"""The long-running process: daemon, scheduler, wiring, health/metrics, systemd."""
