"""The FHIR R4 REST API at /fhir for reading and searching: capabilities, read and search of
Observation, Patient, Device, Location, Organization and AuditEvent, and Observation/$lastn.

router.py assembles the router (`install(app)` mounts it); interactions.py holds the
capabilities, read and search handlers, operations.py $lastn; trail.py is what each request
records in the audit trail, runtime.py the pool and audit writer they all run on. Parsing
and SQL are search/'s, the JSON mapping/'s. Bulk export and transaction Bundles are routers
of their own (bulk/, transaction/).
"""
