"""One metrics pipeline: engine counters pushed to the stats hub, read back as /metrics and /tide/status."""
