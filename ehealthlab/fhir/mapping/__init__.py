"""The mapping: stored rows as FHIR R4 resources (docs/fhir.md).

rows.py holds the records read from the store, codes.py every system and code written,
ids.py the Observation ids and identifiers; r4b.py builds validated fhir.resources R4B
models from the records, fast.py the same JSON as plain dicts for large result sets. Every
other part of /fhir (search, the REST routes, bulk export, transaction Bundles) reads these.
"""
