#!/usr/bin/env bash
# Run the whole suite against the real stack. Starts the stack when it is not already up and
# stops it afterwards (only if this script started it), whatever the tests' outcome.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
IMAGEREC=.venv/bin/imagerec
# The tests' webhook receiver listens on 127.0.0.2; webhooks to loopback are refused unless
# allowed (app/netguard.py), so the test stack allows exactly that address.
export IMAGEREC_CALLBACK_ALLOW_NETS="${IMAGEREC_CALLBACK_ALLOW_NETS:-127.0.0.2/32}"
started=0
if $IMAGEREC stack status >/dev/null 2>&1 && \
   grep -q '^IMAGEREC_TOPOLOGY=cluster' "${IMAGEREC_HOME:-.stack}/stack.env" 2>/dev/null; then
  echo "test: a cluster stack is running; these tests need the single one. Run \`make down\` first" \
       "(\`make test-cluster\` tests the cluster)." >&2
  exit 1
fi
if ! $IMAGEREC stack status >/dev/null 2>&1; then
  $IMAGEREC stack up || { echo "test: the stack failed to start; logs in .stack/logs" >&2
                          $IMAGEREC stack down >/dev/null 2>&1; exit 1; }
  started=1
fi
.venv/bin/ruff check . ; lint_rc=$?
.venv/bin/pytest -ra "$@"
rc=$?
if [ "$started" = 1 ]; then $IMAGEREC stack down; fi
[ "$rc" -ne 0 ] && exit "$rc"
exit "$lint_rc"
