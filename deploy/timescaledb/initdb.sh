#!/bin/sh
# First initialisation of the database server (the image runs /docker-entrypoint-initdb.d/*
# once, on an empty data directory, as the superuser): the platform's own role owns the
# database, with CREATEROLE for the dashboard roles but no superuser (docs/dashboard-roles.md);
# the extensions the migrations need are created here, since only a superuser may create
# timescaledb; the one write any role could make without a privilege (large objects) and
# logins to the maintenance database are taken from PUBLIC.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner="$EHL_DB_USER" -v password="$EHL_DB_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"owner" LOGIN CREATEROLE PASSWORD :'password';
ALTER DATABASE :"db" OWNER TO :"owner";
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_creat(integer), lo_from_bytea(oid, bytea)
    FROM PUBLIC;
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
SQL
