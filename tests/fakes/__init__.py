"""Fakes for faults the real servers cannot produce (never instead of the real servers)."""
