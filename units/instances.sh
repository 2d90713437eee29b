#!/usr/bin/env bash
# instances.sh: the article's instances: for each PORT, apache@PORT.service and
# apache-secretary@PORT.service as links to the templates, so a wildcard
# (`fleetctl start instances/*`) or a file listing starts them.
#
#   units/instances.sh DIR PORT...
#
# The links point at the templates in DIR when DIR holds them (an installed
# /etc/systemd/system), else at the templates beside this script; relative links.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "instances: Missing arguments: expected DIR PORT..., e.g. units/instances.sh units/instances 8080 8081" >&2
  exit 2
fi
dir=$1
shift
templates=$(cd "$(dirname "$0")" && pwd)
[ -f "$dir/apache@.service" ] && templates=$dir
mkdir -p "$dir"
for port in "$@"; do
  if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    echo "instances: Cannot use port \"$port\": expected an integer from 1 to 65535" >&2
    exit 2
  fi
  for unit in apache apache-secretary; do
    ln -sfr "$templates/$unit@.service" "$dir/$unit@$port.service"
  done
done
