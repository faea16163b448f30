"""FHIR search, from the query string to the SQL, and reads by id, which share its tenant
filters.

Parsing is pure: query.py checks a search's parameters against the table of the parameters
served (parameters.py), reading each value with values.py (dates.py for dates) into the
typed criteria of criteria.py; cursors.py signs and checks the cursors of page links. The SQL
takes those criteria and the caller's tenant: sql.py holds what every resource shares
(statements, conditions, totals, keyset pages), observations.py the Observations (readings,
blood-pressure panels, $lastn), tables.py the resources kept in one table each, and
audit_events.py the audit trail.
"""
