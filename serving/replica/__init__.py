"""Code that runs inside a model replica."""
