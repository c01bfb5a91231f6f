"""vic-channel: shared operations layer (CLI, config, logging, metrics, sd_notify) and the lab."""
