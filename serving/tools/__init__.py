"""Builders of the tiny test model and its LoRA adapters (no hub downloads anywhere)."""
