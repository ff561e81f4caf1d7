"""Operating the agent: systemd notify and watchdog, health checks, Prometheus metrics."""
