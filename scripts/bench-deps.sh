#!/usr/bin/env bash
# Installs the peers `tarn bench compare` measures tarn against, from
# Debian's packages, when they are missing: redis-server (with
# redis-benchmark), etcd-server, nats-server and PostgreSQL, and the font
# of its plot (fonts-dejavu-core). Idempotent; needs root (or sudo) for
# apt-get.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  missing+=(postgresql)
fi
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)

if [ ${#missing[@]} -eq 0 ]; then
  echo "bench peers present: redis-server etcd nats-server postgresql (and the plot font)"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing ${missing[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq || true
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts packaged services on install; the benchmark starts its own
# copies on free ports, so stop the system ones (harmless where there are
# none, e.g. in a container without systemd).
for svc in redis-server etcd nats-server postgresql; do
  $sudo service "$svc" stop >/dev/null 2>&1 || true
done
echo "installed ${missing[*]}"
