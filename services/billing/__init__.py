"""billing: owns the money tables in PostgreSQL and records the usage of every finished request."""
