"""Inbox runtime: configuration, composition root, write-side services and the `inbox` CLI."""
