#!/usr/bin/env bash
# Make a self-signed TLS certificate for the local gateway (https://127.0.0.1:8443).
#
# Writes $IMAGEREC_HOME/tls/cert.pem and key.pem (default home: <repo>/.stack). The gateway
# serves TLS on IMAGEREC_GATEWAY_TLS_PORT (8443) whenever both files exist; restart the stack
# (`make down && make up`) to pick them up. For local use only: clients must trust cert.pem
# explicitly, e.g. `curl --cacert .stack/tls/cert.pem https://localhost:8443/healthz`.
#
# Usage: scripts/make-cert.sh [--force] [--days N] [--host NAME]...
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${IMAGEREC_HOME:-$repo/.stack}"
dir="$home/tls"
days=825          # the longest validity browsers accept for a leaf certificate
force=0
hosts=(localhost)

while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) force=1 ;;
        --days) days="$2"; shift ;;
        --host) hosts+=("$2"); shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "make-cert.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

command -v openssl >/dev/null || { echo "make-cert.sh: openssl is not installed" >&2; exit 1; }

if [[ -e "$dir/cert.pem" && $force -eq 0 ]]; then
    echo "$dir/cert.pem already exists; use --force to replace it" >&2
    exit 0
fi

san="IP:127.0.0.1,IP:::1"
for h in "${hosts[@]}"; do san="DNS:$h,$san"; done

mkdir -p "$dir"
chmod 700 "$dir"
umask 077
tmp="$(mktemp -d "$dir/.new.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# ECDSA P-256: small, fast, and accepted by every current TLS client.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -days "$days" -subj "/CN=${hosts[0]}/O=imagerec local" \
    -addext "subjectAltName=$san" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

chmod 600 "$tmp/key.pem"
chmod 644 "$tmp/cert.pem"
mv -f "$tmp/key.pem" "$dir/key.pem"
mv -f "$tmp/cert.pem" "$dir/cert.pem"

echo "wrote $dir/cert.pem and $dir/key.pem (valid $days days for ${hosts[*]}, 127.0.0.1, ::1)"
openssl x509 -in "$dir/cert.pem" -noout -fingerprint -sha256
