"""Channel adapters: pure translations of a channel's own payloads into channel-neutral facts."""
