#!/usr/bin/env bash
# instances.sh: the article's instances: for each PORT, apache@PORT.service and
# apache-secretary@PORT.service as links to the templates, so a wildcard
# (`fleetctl start instances/*`) or a file listing starts them.
#
#   units/instances.sh [--agent] DIR PORT...
#
# The links point at the templates in DIR when DIR holds them (an installed
# /etc/systemd/system), else at the templates beside this script; relative links.
# --agent links apache-secretary-agent@PORT.service instead of
# apache-secretary@PORT.service, to the templates `install.sh --agent` put in
# DIR (whose apache@.service requires apache-secretary-agent@%i.service).
set -euo pipefail
secretary=apache-secretary
if [ "${1:-}" = --agent ]; then
  secretary=apache-secretary-agent
  shift
fi
if [ $# -lt 2 ]; then
  echo "instances: Missing arguments: expected [--agent] DIR PORT..., e.g. units/instances.sh units/instances 8080 8081" >&2
  exit 2
fi
dir=$1
shift
templates=$(cd "$(dirname "$0")" && pwd)
[ -f "$dir/apache@.service" ] && templates=$dir
if [ "$secretary" = apache-secretary-agent ] &&
  ! grep -qx 'Requires=apache-secretary-agent@%i.service' "$templates/apache@.service" 2>/dev/null; then
  echo "instances: Cannot use --agent with \"$dir\": expected the templates of install.sh --agent there (its apache@.service requires apache-secretary-agent@%i.service)" >&2
  exit 2
fi
mkdir -p "$dir"
for port in "$@"; do
  if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    echo "instances: Cannot use port \"$port\": expected an integer from 1 to 65535" >&2
    exit 2
  fi
  for unit in apache "$secretary"; do
    ln -sfr "$templates/$unit@.service" "$dir/$unit@$port.service"
  done
done
