"""Operations layer shared by every daemon: config, logging, metrics, signals, sd_notify."""
