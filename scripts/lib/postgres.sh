# Make a real PostgreSQL available to the tests and export FLOTILLA_TEST_PG_URL.
# Uses the one already answering on 127.0.0.1:5432 if there is one; otherwise
# installs Debian's package and starts its cluster.
ensure_postgres() {
  export FLOTILLA_TEST_PG_URL=${FLOTILLA_TEST_PG_URL:-postgresql://postgres:postgres@127.0.0.1:5432/postgres}
  if ! command -v psql >/dev/null || ! command -v pg_ctlcluster >/dev/null; then
    if ! command -v apt-get >/dev/null; then echo "PostgreSQL missing and no apt-get" >&2; return 1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql git >/dev/null
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  # A password for TCP logins (a no-op where trust auth is configured).
  if ! psql "$FLOTILLA_TEST_PG_URL" -Atqc 'select 1' >/dev/null 2>&1; then
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
  psql "$FLOTILLA_TEST_PG_URL" -Atqc 'select version()'
}
