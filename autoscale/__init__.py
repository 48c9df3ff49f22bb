"""Tide's autoscaling: pure policies that decide replica counts from engine queue depth (no Ray imports here)."""
