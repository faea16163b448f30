"""Grafana dashboards generated with grafanalib."""
