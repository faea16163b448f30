"""The local stack: a private PostgreSQL and Mosquitto per state directory.

`local.LocalStack` is what `ehealthlab stack` drives; `postgres.PostgresServer` and
`mosquitto.MosquittoBroker` are the servers, also started by the test fixtures.
"""
