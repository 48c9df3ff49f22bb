"""Tide's fixes to vLLM and Ray internals, one module each, with the upstream version and issue they track.

They are what breaks first on an upgrade: each says what it works around and how to tell it is no longer needed.
"""
