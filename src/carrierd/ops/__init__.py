"""Operations: status callbacks, retention, gauges, systemd notification."""
