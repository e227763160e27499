#!/bin/sh
# The production Temporal's one-shot steps, run by docker-compose.yml's temporalio/admin-tools
# services and, outside Docker, by test/production-topology.test.ts (the same script, the same
# deploy/temporal/temporal.env):
#
#   setup.sh schema      create the default and visibility databases and bring their schemas up
#                        to the newest version (before the server starts; safe to re-run)
#   setup.sh namespace   create TEMPORAL_NAMESPACE when missing (once the server answers), and
#                        register on it the search attributes SEARCH_ATTRIBUTES names that it
#                        lacks (every workflow sets them; safe to re-run)
#
# Environment: temporal.env's settings, POSTGRES_SEEDS, DB_PORT, POSTGRES_PWD, TEMPORAL_ADDRESS;
# TEMPORAL_SQL_TOOL, TEMPORAL_CLI and SCHEMA_DIR name the tools and the schema tree (the
# admin-tools image's by default).
set -eu
sql_tool=${TEMPORAL_SQL_TOOL:-temporal-sql-tool}
temporal=${TEMPORAL_CLI:-temporal}
schema_dir=${SCHEMA_DIR:-/etc/temporal/schema}

sql() {
  "$sql_tool" --plugin "$DB" --ep "$POSTGRES_SEEDS" -p "${DB_PORT:-5432}" -u "$POSTGRES_USER" --pw "$POSTGRES_PWD" "$@"
}

schema() { # database, schema subfolder
  # create-database fails on a database that exists; a re-run goes on to the (idempotent) updates.
  if ! out=$(sql --db "$1" create-database 2>&1); then
    case $out in *"already exists"*) ;; *) printf '%s\n' "$out" >&2; exit 1 ;; esac
  fi
  sql --db "$1" setup-schema -v 0.0
  sql --db "$1" update-schema -d "$schema_dir/postgresql/v12/$2/versioned"
}

case ${1:-} in
  schema)
    schema "$DBNAME" temporal
    schema "$VISIBILITY_DBNAME" visibility
    ;;
  namespace)
    tries=0
    until "$temporal" operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do
      tries=$((tries + 1))
      [ "$tries" -lt 120 ] || { echo "setup.sh: no Temporal server answers at $TEMPORAL_ADDRESS after 2 minutes" >&2; exit 1; }
      sleep 1
    done
    if ! "$temporal" operator namespace describe --address "$TEMPORAL_ADDRESS" -n "$TEMPORAL_NAMESPACE" >/dev/null 2>&1; then
      "$temporal" operator namespace create --address "$TEMPORAL_ADDRESS" -n "$TEMPORAL_NAMESPACE" --retention "$NAMESPACE_RETENTION"
    fi
    # The server refuses a start that sets a search attribute the namespace does not have (the
    # burst pool's update-with-start); the dev server gets them as flags (sim/dev-server.ts).
    # A namespace just made is not found here until the server's namespace cache refreshes (~10 s).
    tries=0
    until registered=$("$temporal" operator search-attribute list --address "$TEMPORAL_ADDRESS" -n "$TEMPORAL_NAMESPACE" -o json 2>&1); do
      tries=$((tries + 1))
      [ "$tries" -lt 60 ] || { printf 'setup.sh: %s\n' "$registered" >&2; exit 1; }
      sleep 1
    done
    for name in $(printf '%s' "$SEARCH_ATTRIBUTES" | tr ',' ' '); do
      case $registered in *"\"$name\""*) continue ;; esac
      "$temporal" operator search-attribute create --address "$TEMPORAL_ADDRESS" -n "$TEMPORAL_NAMESPACE" --name "$name" --type Keyword
    done
    ;;
  *)
    echo "usage: setup.sh schema|namespace" >&2
    exit 2
    ;;
esac
