"""FHIR R4 mapping and API (issue 6). Named so it never shadows the top-level fhir package."""
