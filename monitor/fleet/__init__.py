"""Fleet: several daemons sharing one PostgreSQL (events replicated through an outbox, cameras moved by leases)."""
