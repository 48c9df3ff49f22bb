"""Governance, pure (no Ray, no vLLM, no web framework): API keys, per-key rate limits, bounded queues."""
