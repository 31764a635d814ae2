"""What the daemon tells: the per-call log, Prometheus, the health file, recent stats."""
