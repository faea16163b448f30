"""Simulated patients, devices and broadband (issue 5)."""
