#!/usr/bin/env bash
# install.sh: puts secretary on a host: the deno binary and the bundles in
# /opt/bin, a `registry` command beside them, and the units in
# /etc/systemd/system. Build the bundles first (node_modules/.bin/deno task bundle).
#
#   ./install.sh [--root DIR] [--from DIR] [--deno PATH] [--tls] [--instance PORT]...
#
#   --root DIR       install under DIR instead of / (tests, images); no daemon-reload
#   --from DIR       where the bundles are (default: dist)
#   --deno PATH      the deno binary to copy (default: node_modules/deno/deno, else deno on PATH)
#   --tls            also install the drop-in for etcd over TLS (units/apache-secretary-tls.conf)
#   --instance PORT  also link apache@PORT.service and apache-secretary@PORT.service
#                    to the templates (the article's instances); repeatable
#
# Then: systemctl start apache@8080.service (it starts its secretary).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

root=/
from=""
deno=""
tls=no
instances=()
while [ $# -gt 0 ]; do
  case "$1" in
  --root) root="${2:?--root needs a directory}"; shift 2 ;;
  --root=*) root="${1#--root=}"; shift ;;
  --from) from="${2:?--from needs a directory}"; shift 2 ;;
  --from=*) from="${1#--from=}"; shift ;;
  --deno) deno="${2:?--deno needs a path}"; shift 2 ;;
  --deno=*) deno="${1#--deno=}"; shift ;;
  --tls) tls=yes; shift ;;
  --instance) instances+=("${2:?--instance needs a port}"); shift 2 ;;
  --instance=*) instances+=("${1#--instance=}"); shift ;;
  -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "install: Cannot use argument \"$1\": expected --root DIR, --from DIR, --deno PATH, --tls or --instance PORT" >&2; exit 2 ;;
  esac
done

# paths given are relative to where the command runs; the rest to this repository
root=$(realpath -m "$root")
from=$(realpath -m "${from:-$here/dist}")
[ -z "$deno" ] || deno=$(realpath -m "$deno")
cd "$here"

for f in "$from/secretary.mjs" "$from/registry.mjs"; do
  if [ ! -s "$f" ]; then
    echo "install: $f is missing: build the bundles first (node_modules/.bin/deno task bundle)" >&2
    exit 1
  fi
done
if [ -z "$deno" ]; then
  if [ -x node_modules/deno/deno ]; then deno=node_modules/deno/deno; else deno=$(command -v deno || true); fi
fi
# the npm package's bin entry may be a launcher script: copy the binary it points at
deno=$(readlink -f "${deno:-/nonexistent}")
if ! "$deno" --version >/dev/null 2>&1 || [ "$(head -c 4 "$deno" | od -An -c | tr -d ' ')" != '177ELF' ]; then
  echo "install: Cannot use deno \"$deno\": expected the deno binary (--deno PATH)" >&2
  exit 2
fi

bin="${root%/}/opt/bin"
units="${root%/}/etc/systemd/system"
install -d -m 0755 "$bin" "$units"
install -m 0755 "$deno" "$bin/deno"
for name in secretary registry; do
  install -m 0644 "$from/$name.mjs" "$from/$name.mjs.map" "$bin/"
done

# `registry ls`, `registry get`, `registry watch` with the least privilege: the etcd
# endpoints of SECRETARY_ETCD (from the environment or /etc/environment) and nothing else
cat >"$bin/registry.tmp" <<'EOF'
#!/bin/sh
# registry: lists, gets and watches the records that secretaries keep in etcd.
# Reaches only SECRETARY_ETCD (host:port[,host:port...]; from the environment,
# else /etc/environment, else 127.0.0.1:2379). Installed by secretary's install.sh.
here=$(dirname "$(readlink -f "$0")")
if [ -z "${SECRETARY_ETCD:-}" ] && [ -r /etc/environment ]; then
  SECRETARY_ETCD=$(sed -n 's/^SECRETARY_ETCD=//p' /etc/environment | tail -n 1 | tr -d "\"'")
fi
etcd=${SECRETARY_ETCD:-127.0.0.1:2379}
exec "$here/deno" run --allow-net="$etcd" \
  --allow-env=ETCDCTL_CACERT,ETCDCTL_CERT,ETCDCTL_KEY,ETCDCTL_USER,GRPC_* \
  "$here/registry.mjs" --endpoints "$etcd" "$@"
EOF
chmod 0755 "$bin/registry.tmp"
mv -f "$bin/registry.tmp" "$bin/registry"

install -m 0644 units/apache@.service units/apache-secretary@.service "$units/"
if [ "$tls" = yes ]; then
  install -D -m 0644 units/apache-secretary-tls.conf "$units/apache-secretary@.service.d/tls.conf"
fi
if [ ${#instances[@]} -gt 0 ]; then
  units/instances.sh "$units" "${instances[@]}"
fi

if [ "$root" = / ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "install: deno, secretary.mjs, registry.mjs and registry in $bin; units in $units" >&2
