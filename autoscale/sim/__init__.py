"""Fleet simulator: plans autoscaling past this machine with the production policy and router code."""
