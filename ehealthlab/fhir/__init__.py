"""FHIR R4 mapping and API (issue 6). Named so it never shadows the top-level fhir package.

The subpackages follow the CapabilityStatement (capability.py): mapping/ turns stored rows
into resources; search/ parses searches and holds the SQL of reads and searches; rest/ serves
read, search and Observation/$lastn; bulk/ is `$export`; transaction/ takes transaction and
batch Bundles (`POST /fhir`); questionnaires/ the SUS Questionnaire and the
QuestionnaireResponses posted against it; measures/ the pilot's indicators as Measures,
MeasureReports and the Groups they are about. Beside them: access.py (scopes and tenants),
audit.py (the audit trail), outcome.py and outcome_route.py (errors as OperationOutcomes).
"""
