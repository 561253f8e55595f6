"""Kafka edges: the relay (event store → topic) and Faust projection workers."""
