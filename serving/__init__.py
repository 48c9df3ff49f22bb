"""Tide's serving layer: vLLM engines in Ray Serve deployments behind one OpenAI-compatible ingress."""
