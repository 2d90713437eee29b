#!/usr/bin/env bash
# The 2015 article's "secretary" (apache-secretary@.service), the baseline of
# the benchmarks: its ExecStart loop as printed, fixed only where it cannot run.
#
#   ETCDCTL_API=2 ETCDCTL_ENDPOINTS=http://127.0.0.1:2379 bench/article-loop.sh IP PORT HOST INTERVAL TTL
#
# The unit as printed (its "/" are the article's mangled "\"):
#
#   ExecStart=/bin/bash -c '/
#     while true; do /
#       curl -f ${COREOS_PUBLIC_IPV4}:%i; /
#       if [ $? -eq 0 ]; then /
#         etcdctl set /services/apache/${COREOS_PUBLIC_IPV4} /'{"host": "%H", "ipv4_addr": ${COREOS_PUBLIC_IPV4}, "port": %i}/' --ttl 30; /
#       else /
#         etcdctl rm /services/apache/${COREOS_PUBLIC_IPV4}; /
#       fi; /
#       sleep 20; /
#     done'
#   ExecStop=/usr/bin/etcdctl rm /services/apache/${COREOS_PUBLIC_IPV4}
#
# The benchmarks run ExecStop themselves, as systemd would (bench/lib.ts, ArticleLoop.stop).
# Kept as printed: curl without a timeout (a hung instance blocks the loop for
# good), one key per IP, the value with its unquoted IP (not JSON), a write
# every pass, and curl's page and progress meter going to the log.

# Fix 1: systemd's specifiers and the EnvironmentFile's variable become arguments:
# ${COREOS_PUBLIC_IPV4} is IP, %i is PORT, %H is HOST; and the unit's fixed
# "sleep 20" and "--ttl 30" are INTERVAL and TTL, so one script runs both settings.
IP=$1 PORT=$2 HOST=$3 INTERVAL=$4 TTL=$5

# Fix 2: etcdctl 3.4 speaks the v3 API unless told otherwise; "set" and "rm"
# exist only in v2, so ETCDCTL_API=2 (and etcd runs with --enable-v2). The
# article's etcdctl found etcd at its default local address; here
# ETCDCTL_ENDPOINTS from the environment names it.
export ETCDCTL_API=${ETCDCTL_API:-2}

# Fix 3: the body is this file instead of a "bash -c '...'" string, so the
# mangled line continuations go, and so does the quoting the article got
# wrong: its value's own single quotes ('\'' in the unit) would have ended the
# outer single-quoted string. The value below is the same text, in double quotes.
while true; do
  curl -f ${IP}:${PORT}
  if [ $? -eq 0 ]; then
    etcdctl set /services/apache/${IP} "{\"host\": \"${HOST}\", \"ipv4_addr\": ${IP}, \"port\": ${PORT}}" --ttl ${TTL}
  else
    etcdctl rm /services/apache/${IP}
  fi
  sleep ${INTERVAL}
done
