#!/usr/bin/env bash
# install.sh: puts secretary on a host: the deno binary and the bundles in
# /opt/bin, a `registry` command beside them, and the units in
# /etc/systemd/system. Build the bundles first (node_modules/.bin/deno task bundle).
#
#   ./install.sh [--root DIR] [--from DIR] [--deno PATH] [--agent] [--tls] [--auth] [--instance PORT]...
#
#   --root DIR       install under DIR instead of / (tests, images); no daemon-reload
#   --from DIR       where the bundles are (default: dist)
#   --deno PATH      the deno binary to copy (default: node_modules/deno/deno, else deno on PATH)
#   --agent          one secretary agent for the host instead of a secretary per instance:
#                    secretary-agent.service, apache-secretary-agent@.service, and an
#                    apache@.service that starts apache-secretary-agent@%i, not apache-secretary@%i
#   --tls            also install the drop-ins for etcd over TLS (tls.conf: units/*-tls.conf)
#   --auth           also install the drop-in for etcd authentication (auth.conf: units/etcd-auth.conf),
#                    which reads ETCDCTL_USER from /etc/secretary/etcd-user (root's, mode 0600)
#   --instance PORT  also link apache@PORT.service and apache-secretary@PORT.service (with
#                    --agent: apache-secretary-agent@PORT.service) to the templates; repeatable
#
# Then: systemctl start apache@8080.service (it starts its secretary, or attaches
# it to the agent). On a proxy host: systemctl enable --now registry-haproxy@apache
# (or registry-nginx@apache).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

root=/
from=""
deno=""
tls=no
auth=no
agent=no
instances=()
while [ $# -gt 0 ]; do
  case "$1" in
  --root) root="${2:?--root needs a directory}"; shift 2 ;;
  --root=*) root="${1#--root=}"; shift ;;
  --from) from="${2:?--from needs a directory}"; shift 2 ;;
  --from=*) from="${1#--from=}"; shift ;;
  --deno) deno="${2:?--deno needs a path}"; shift 2 ;;
  --deno=*) deno="${1#--deno=}"; shift ;;
  --agent) agent=yes; shift ;;
  --tls) tls=yes; shift ;;
  --auth) auth=yes; shift ;;
  --instance) instances+=("${2:?--instance needs a port}"); shift 2 ;;
  --instance=*) instances+=("${1#--instance=}"); shift ;;
  -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "install: Cannot use argument \"$1\": expected --root DIR, --from DIR, --deno PATH, --agent, --tls, --auth or --instance PORT" >&2; exit 2 ;;
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

# SECRETARY_ETCD is deno's --allow-net list in the units: host:port, never a URL
# (deno would refuse to start, exit 1, and Restart= would retry it every 2 s)
environment="${root%/}/etc/environment"
if [ -r "$environment" ]; then
  etcd_list=$(sed -n 's/^SECRETARY_ETCD=//p' "$environment" | tail -n 1 | tr -d "\"'")
  host='([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}'
  if [ -n "$etcd_list" ] && ! printf '%s' "$etcd_list" | grep -Eq "^$host(,$host)*\$"; then
    shown=$(printf '%s' "$etcd_list" | head -c 200 | tr -c '[:print:]' '?')
    echo "install: Cannot use SECRETARY_ETCD=\"$shown\" in $environment: expected host:port[,host:port...], not URLs" >&2
    exit 2
  fi
fi

# the etcd user's password: in a file only root reads, never one others can
credentials="${root%/}/etc/secretary/etcd-user"
if [ "$auth" = yes ] && [ -e "$credentials" ]; then
  mode=$(stat -L -c %a "$credentials")
  if [ $((8#$mode & 8#077)) -ne 0 ]; then
    echo "install: Cannot use $credentials: mode 0$mode lets others read the password; expected mode 0600 (chmod 0600)" >&2
    exit 2
  fi
fi

bin="${root%/}/opt/bin"
units="${root%/}/etc/systemd/system"
install -d -m 0755 "$bin" "$units"
install -m 0755 "$deno" "$bin/deno"
for name in secretary registry; do
  install -m 0644 "$from/$name.mjs" "$from/$name.mjs.map" "$bin/"
done

# `registry ls`, `registry get`, `registry watch` with the least privilege: its etcd
# endpoints, and over TLS the certificate files, nothing else
cat >"$bin/registry.tmp" <<'EOF'
#!/bin/sh
# registry: lists, gets and watches the records that secretaries keep in etcd.
# Installed by secretary's install.sh. Each setting comes from the environment,
# else /etc/environment. It reaches only its etcd endpoints: ETCDCTL_ENDPOINTS
# (URLs, for https), else SECRETARY_ETCD (host:port[,host:port...]), else
# 127.0.0.1:2379; and reads only the files of ETCDCTL_CACERT, ETCDCTL_CERT and
# ETCDCTL_KEY, or of --cacert, --cert and --key. ETCDCTL_USER works as for etcdctl.
here=$(dirname "$(readlink -f "$0")")
setting() {
  eval "value=\${$1:-}"
  if [ -z "$value" ] && [ -r /etc/environment ]; then
    value=$(sed -n "s/^$1=//p" /etc/environment | tail -n 1 | tr -d "\"'")
  fi
  printf '%s' "$value"
}
endpoints=$(setting ETCDCTL_ENDPOINTS)
[ -n "$endpoints" ] || endpoints=$(setting SECRETARY_ETCD)
[ -n "$endpoints" ] || endpoints=127.0.0.1:2379
# deno's --allow-net takes host:port: the endpoints without scheme or trailing /
net=$(printf '%s' "$endpoints" | sed -E 's#[A-Za-z][A-Za-z0-9+.-]*://##g; s#/+(,|$)#\1#g')
files=""
for name in ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY ETCDCTL_USER; do
  value=$(setting "$name")
  [ -n "$value" ] || continue
  export "$name=$value"
  [ "$name" = ETCDCTL_USER ] || files="$files,$value"
done
previous=""
for arg in "$@"; do
  case "$previous" in --cacert | --cert | --key) files="$files,$arg" ;; esac
  case "$arg" in --cacert=* | --cert=* | --key=*) files="$files,${arg#*=}" ;; esac
  previous=$arg
done
export DENO_NO_UPDATE_CHECK=1
exec "$here/deno" run --allow-net="$net" ${files:+"--allow-read=${files#,}"} \
  --allow-env=ETCDCTL_CACERT,ETCDCTL_CERT,ETCDCTL_KEY,ETCDCTL_USER,GRPC_* \
  "$here/registry.mjs" --endpoints "$endpoints" "$@"
EOF
chmod 0755 "$bin/registry.tmp"
mv -f "$bin/registry.tmp" "$bin/registry"

install -m 0644 units/registry-haproxy@.service units/examples/nginx/registry-nginx@.service \
  units/registry-serve.service "$units/"
if [ "$agent" = no ]; then
  install -m 0644 units/apache@.service units/apache-secretary@.service "$units/"
  secretary=apache-secretary@   # the unit that talks to etcd for the instances, for the drop-ins
else
  install -m 0644 units/secretary-agent.service units/apache-secretary-agent@.service "$units/"
  # apache@.service with its secretary's unit replaced by the agent's, made here from
  # units/apache@.service (one source: a drop-in can add a dependency, never remove one)
  sed -e '1i # Installed by install.sh --agent: units/apache@.service with apache-secretary@%i.service\
# replaced by apache-secretary-agent@%i.service, which attaches the instance to secretary-agent.' \
    -e 's/apache-secretary@%i\.service/apache-secretary-agent@%i.service/g' units/apache@.service >"$units/apache@.service.tmp"
  if [ "$(grep -cxE '(Requires|Before)=apache-secretary-agent@%i\.service' "$units/apache@.service.tmp")" != 2 ]; then
    rm -f "$units/apache@.service.tmp"
    echo "install: Cannot make apache@.service for --agent: units/apache@.service has no Requires= and Before= of apache-secretary@%i.service" >&2
    exit 1
  fi
  chmod 0644 "$units/apache@.service.tmp"
  mv -f "$units/apache@.service.tmp" "$units/apache@.service"
  secretary=secretary-agent
fi
if [ "$tls" = yes ]; then
  install -D -m 0644 "units/${secretary%@}-tls.conf" "$units/$secretary.service.d/tls.conf"
  install -D -m 0644 units/registry-haproxy-tls.conf "$units/registry-haproxy@.service.d/tls.conf"
  install -D -m 0644 units/registry-nginx-tls.conf "$units/registry-nginx@.service.d/tls.conf"
fi
if [ "$auth" = yes ]; then
  for unit in "$secretary" registry-haproxy@ registry-nginx@; do
    install -D -m 0644 units/etcd-auth.conf "$units/$unit.service.d/auth.conf"
  done
  [ -e "$credentials" ] ||
    echo "install: put ETCDCTL_USER=name:password in $credentials (mode 0600) before the units start" >&2
fi
if [ ${#instances[@]} -gt 0 ]; then
  if [ "$agent" = yes ]; then
    units/instances.sh --agent "$units" "${instances[@]}"
  else
    units/instances.sh "$units" "${instances[@]}"
  fi
fi

if [ "$root" = / ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "install: deno, secretary.mjs, registry.mjs and registry in $bin; units in $units" >&2
