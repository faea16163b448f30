"""Device gateway: start-ups onboard devices, providers enrol patients (issue 3)."""
