"""Foundation every stage may use: class names and groups, redaction, metrics, logging, systemd notify, memory."""
