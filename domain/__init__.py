"""The pure domain: aggregates, their events and rules. Knows nothing of Kafka, HTTP or SQL."""
