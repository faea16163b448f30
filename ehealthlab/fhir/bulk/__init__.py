"""FHIR Bulk Data export, `$export` (Bulk Data Access IG v2.0.0; docs/fhir-bulk.md).

export.py is the pure part (kick-off parameters, levels, file names, the manifest), store.py
the jobs table and each type's rows streamed from the store, worker.py the background
threads that write a job's NDJSON files, routes.py the HTTP routes (kick-off, status,
cancel, files) with the router's lifespan, which runs the export runner.
"""
