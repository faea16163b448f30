"""System Usability Scale responses as FHIR (indicators.md, "User and public-sector
response"): the SUS `Questionnaire` the API serves and the `QuestionnaireResponse`s posted
against it.

sus.py builds the Questionnaire and a stored response's QuestionnaireResponse (pure);
intake.py reads a posted QuestionnaireResponse into a response to store, naming every bad
item (pure); routes.py is `POST /fhir/QuestionnaireResponse`. Reading and searching stored
responses is the read and search API's (rest/, search/tables.py).
"""
