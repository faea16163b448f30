"""Readings delivered as FHIR transaction (or batch) Bundles, `POST /fhir` (docs/fhir-bulk.md):
the write path of /fhir.

bundle.py reads a Bundle's Observations into the device contract's reading items (each entry
in entry.py, an Observation's code and values in observation_readings.py, what each entry
becomes described in plan.py), messages.py makes them contract messages, delivery.py stores
them through ingest's own validation and store path, response.py answers the
transaction-response Bundle, and routes.py is the HTTP route. All but delivery.py and
routes.py are pure.
"""
