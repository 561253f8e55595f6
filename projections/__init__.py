"""Read models built from wire events: pure apply functions plus a thin PostgreSQL writer."""
