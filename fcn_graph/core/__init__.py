"""Conventions and plumbing every layer shares: the constants (ignore label, mean
pixel, palette, variants), one-line user errors, atomic file writes and output
records, finite-value checks and progress lines."""
