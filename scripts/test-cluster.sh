#!/usr/bin/env bash
# The cluster topology's tests (tests/cluster) and the chaos scenarios CI runs, against the
# real three-broker / four-node / Sentinel stack. Starts the cluster when no stack is up and
# stops it afterwards (only if this script started it), whatever the outcome.
#   CHAOS_SCENARIOS   comma-separated bench/chaos.py scenarios (default: the two CI runs)
#   CLUSTER_OPTIONAL=1  (set by `make test`) skip, loudly, when a stack this script did not
#                     start is running, instead of failing: the cluster needs the same ports
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
IMAGEREC=.venv/bin/imagerec
export IMAGEREC_TOPOLOGY=cluster
started=0
if $IMAGEREC stack status >/dev/null 2>&1; then
  running="$(sed -n 's/^IMAGEREC_TOPOLOGY=//p' "${IMAGEREC_HOME:-.stack}/stack.env" 2>/dev/null)"
  if [ "${running:-single}" != cluster ]; then
    msg="test-cluster: a ${running:-single} stack is running; the cluster needs its ports. Run \`make down\`, then \`make test-cluster\`."
    if [ "${CLUSTER_OPTIONAL:-0}" = 1 ]; then echo "*** SKIPPED: $msg" >&2; exit 0; fi
    echo "$msg" >&2; exit 1
  fi
else
  $IMAGEREC stack up --topology cluster || { echo "test-cluster: the cluster failed to start; logs in .stack/logs" >&2
                                            $IMAGEREC stack down >/dev/null 2>&1; exit 1; }
  started=1
fi
.venv/bin/pytest -ra tests/cluster "$@"
rc=$?
.venv/bin/python bench/chaos.py --scenarios "${CHAOS_SCENARIOS:-kafka-leader-kill,minio-node-kill}"
chaos_rc=$?
if [ "$started" = 1 ]; then $IMAGEREC stack down; fi
[ "$rc" -ne 0 ] && exit "$rc"
exit "$chaos_rc"
