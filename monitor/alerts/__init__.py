"""Stage 3, alerts: the event state machine, alert sinks and the SQLite event history."""
