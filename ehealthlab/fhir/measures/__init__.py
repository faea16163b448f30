"""The pilot's indicators as FHIR (indicators.md, "Output"; issue 10 item 6): one `Measure`
per indicator of the registry and the composite `Measure` "pilot-indicators"
(definitions.py), `MeasureReport`s of the current evaluations, one per group and period, with
small groups suppressed (reports.py), and the `Group`s they are about (groups.py). Pure: the
SQL is search/measure_reports.py's and search/published.py's.
"""
