#!/bin/sh
# docker-compose.yml: runs once, when the postgres container initialises its
# data directory (docker-entrypoint-initdb.d). Makes the application role,
# which is not a superuser and owns only its database, with the password
# from colony.env. The superuser (postgres) keeps POSTGRES_PASSWORD.
set -eu
: "${COLONY_DB_PASSWORD:?set COLONY_DB_PASSWORD in colony.env}"
case "$COLONY_DB_PASSWORD" in
*"'"* | *"\\"*)
    echo "COLONY_DB_PASSWORD must not contain quotes or backslashes (use openssl rand -hex 32)" >&2
    exit 1
    ;;
esac
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<EOSQL
CREATE ROLE colony LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD '${COLONY_DB_PASSWORD}';
CREATE DATABASE colony OWNER colony;
EOSQL
