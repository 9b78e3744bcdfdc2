"""The API edges: one module per client dialect, thin handlers over callmissed.gateway."""
