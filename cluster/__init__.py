"""Tide's cluster launch support: `ray up` YAMLs and their validation."""
