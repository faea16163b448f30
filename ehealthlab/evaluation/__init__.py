"""Evaluation core: the pilot indicators of indicators.md."""
