"""Prometheus metrics of one API process (a registry per process, not module-global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.inbound_messages = Counter(
            "inbox_inbound_messages_total", "Inbound messages by outcome", ["outcome"], registry=self.registry
        )
        self.webhook_unknown_accounts = Counter(
            "inbox_webhook_unknown_account_total", "Webhook messages for unregistered channel accounts",
            ["channel"], registry=self.registry,
        )
        self.webhook_facts = Counter(
            "inbox_webhook_facts_total", "Facts in Meta webhooks by kind and outcome", ["kind", "outcome"],
            registry=self.registry,
        )
        self.webhook_rejected = Counter(
            "inbox_webhook_rejected_total", "Meta webhook requests refused (bad signature, bad payload)", ["reason"],
            registry=self.registry,
        )
        self.webhook_repairs = Counter(
            "inbox_webhook_repaired_values_total",
            "Values of Meta webhook facts repaired to be storable (NUL/surrogates, truncation, time, JSON)",
            ["field", "reason"], registry=self.registry,
        )
        self.requests = Histogram(
            "inbox_http_request_seconds", "HTTP request latency", ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

        # Set by /metrics when scraped (inbox/adapters/lag.py says what each one measures).
        self.relay_lag_events = Gauge(
            "inbox_relay_lag_events", "Events in the store not yet published by the relay", registry=self.registry
        )
        self.relay_lag_seconds = Gauge(
            "inbox_relay_lag_seconds", "Seconds the relay has been behind without advancing", registry=self.registry
        )
        self.projection_lag_events = Gauge(
            "inbox_projection_lag_events", "Published events not yet applied by the projection workers",
            registry=self.registry,
        )
        self.projection_lag_seconds = Gauge(
            "inbox_projection_lag_seconds", "Seconds the projections have been behind without advancing",
            registry=self.registry,
        )
        self.projection_dead_letters = Gauge(
            "inbox_projection_dead_letters", "Events the projection could not apply (dead letters)",
            registry=self.registry,
        )
        self.inbound_queue = Gauge(
            "inbox_inbound_queue", "Inbound facts waiting for the group commit", registry=self.registry
        )
        self.write_path_up = Gauge(
            "inbox_write_path_up", "1 unless the last commit attempt failed with none succeeding since",
            registry=self.registry,
        )

        self.channel_accounts_needing_reauth = Gauge(
            "inbox_channel_accounts_needs_reauth",
            "Connected channel accounts whose token Meta rejected (code 190): their sends wait", registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
