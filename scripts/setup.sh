#!/usr/bin/env bash
# Installs the Debian packages Periscope needs to build, run and test.
# Idempotent: when every package is already present, apt-get is not called at all.
set -euo pipefail

BUILD_PACKAGES=(clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config make gcc)
TEST_PACKAGES=(prometheus bpftool bpftrace curl python3 python3-jsonschema hyperfine procps nginx openssl wrk nftables iproute2 iperf3 systemd docker.io busybox-static protobuf-compiler golang-github-google-pprof-dev golang-github-prometheus-client-model-dev redis-server redis-tools postgresql postgresql-client mariadb-server mariadb-client dnsmasq dnsutils dnsperf)

want=("${BUILD_PACKAGES[@]}")
if [ "${1:-}" = "--test" ]; then
  want+=("${TEST_PACKAGES[@]}")
fi

missing=()
for pkg in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup: all system packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # --no-install-recommends keeps prometheus from pulling in its node exporter and the like.
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The reference Python parser of the exposition formats, used by the end-to-end tests.
if [ "${1:-}" = "--test" ] && ! python3 -c "import prometheus_client" 2>/dev/null; then
  echo "setup: installing prometheus_client for python3"
  python3 -m pip install --quiet --disable-pip-version-check "prometheus_client==0.21.1"
fi

# redis-py, the Redis client the database tests drive alongside redis-cli.
if [ "${1:-}" = "--test" ] && ! python3 -c "import redis" 2>/dev/null; then
  echo "setup: installing redis-py for python3"
  python3 -m pip install --quiet --disable-pip-version-check "redis==5.2.1"
fi

# psycopg 3, the PostgreSQL client the database tests drive alongside psql.
if [ "${1:-}" = "--test" ] && ! python3 -c "import psycopg" 2>/dev/null; then
  echo "setup: installing psycopg for python3"
  python3 -m pip install --quiet --disable-pip-version-check "psycopg[binary]==3.2.3"
fi

# PyMySQL (text protocol) and MySQL Connector/Python (prepared statements, the binary
# protocol), the MySQL clients the database tests drive alongside the mariadb client.
if [ "${1:-}" = "--test" ] && ! python3 -c "import pymysql, mysql.connector" 2>/dev/null; then
  echo "setup: installing PyMySQL and mysql-connector-python for python3"
  python3 -m pip install --quiet --disable-pip-version-check "PyMySQL==1.1.1" "mysql-connector-python==9.1.0"
fi

# The Kubernetes schemas (bundled, no cluster needed) that the deploy tests validate the
# manifests against.
if [ "${1:-}" = "--test" ] && ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate for python3"
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi

# The Helm SDK (Helm 4, bundled in the wheel) that renders the chart in the deploy tests,
# without a helm binary.
if [ "${1:-}" = "--test" ] && ! python3 -c "import helm_python" 2>/dev/null; then
  echo "setup: installing helm-python-sdk for python3"
  python3 -m pip install --quiet --disable-pip-version-check "helm-python-sdk==0.2.2"
fi
