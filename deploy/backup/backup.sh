#!/bin/sh
# Backups of the platform (deploy/compose.yaml, service `backup`; docs/deployment.md):
#   loop    one backup now, then one every EHL_BACKUP_INTERVAL_S seconds (default a day)
#   once    one backup now
#   check   healthy when the newest database dump is younger than two intervals
# A backup is the database in pg_dump's custom format (libpq's PG* variables say which), the
# server's roles (pg_dumpall --roles-only: the dashboard roles and their password hashes are
# server-wide, outside any database dump) and the broker's dynamic-security file (devices'
# MQTT accounts). Files are written under a temporary name and renamed when complete, so a
# file with a final name is whole; those older than EHL_BACKUP_KEEP_DAYS days are deleted.
set -eu
target=${EHL_BACKUP_TARGET:-/backups}
dynsec=${EHL_DYNSEC_FILE:-/mosquitto-data/dynamic-security.json}
interval=${EHL_BACKUP_INTERVAL_S:-86400}
keep_days=${EHL_BACKUP_KEEP_DAYS:-14}
umask 077  # patients' pseudonymous data and password hashes

complete() {  # complete NAME: move the temporary file .NAME to NAME
    mv "$target/.$1" "$target/$1"
}

once() {
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    pg_dump --format=custom --file="$target/.db-$stamp.dump"
    complete "db-$stamp.dump"
    pg_dumpall --roles-only --file="$target/.roles-$stamp.sql"
    complete "roles-$stamp.sql"
    cp "$dynsec" "$target/.dynsec-$stamp.json"
    complete "dynsec-$stamp.json"
    find "$target" -maxdepth 1 -type f \
        \( -name 'db-*.dump' -o -name 'roles-*.sql' -o -name 'dynsec-*.json' \) \
        -mtime +"$keep_days" -delete
    echo "backup $stamp written to $target"
}

check() {
    minutes=$((2 * interval / 60 + 1))
    newest=$(find "$target" -maxdepth 1 -type f -name 'db-*.dump' -mmin -"$minutes" | head -n 1)
    if [ -z "$newest" ]; then
        echo "no database dump in $target younger than $minutes minutes" >&2
        exit 1
    fi
}

case "${1:-}" in
    once) once ;;
    check) check ;;
    loop)
        while :; do
            # a process of its own: `set -e` holds inside it, not in a `||` list
            sh "$0" once || echo "backup failed; next attempt in $interval s" >&2
            sleep "$interval"
        done
        ;;
    *)
        echo "usage: $0 loop|once|check" >&2
        exit 2
        ;;
esac
