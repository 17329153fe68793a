#!/usr/bin/env bash
# make demo: porin-agent on its embedded single-node default, three pods
# created through the CNI plugin exactly as a runtime would, shown talking;
# then a service, porin monitor, network policy with the flow log and
# Prometheus metrics, a host port, and the agent restarted with an uplink to show XDP.
#
# The node runs in its own network namespace (porin-demo-node) so the demo
# never touches this machine's own interfaces; everything is removed on exit.
set -euo pipefail

NODE=porin-demo-node
PODS=(porin-demo-pod1 porin-demo-pod2 porin-demo-pod3)
SOCK=/var/run/porin/porin.sock
NETCONF='{"cniVersion":"1.0.0","name":"porin","type":"porin"}'
LOG=$(mktemp /tmp/porin-demo-agent.XXXXXX.log)
AGENT_PID=""
AGENTCONF=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_node() { nsenter --net=/var/run/netns/$NODE "$@"; }

cni() { # cni COMMAND POD: as kubelet calls it (namespace and name), the pod labelled app=NAME
  local name=${2#porin-demo-}
  local conf=${NETCONF%\}}',"args":{"cni":{"labels":[{"key":"app","value":"'$name'"}]}}}'
  CNI_COMMAND=$1 CNI_CONTAINERID=${2/porin-demo-/demo-} CNI_NETNS=/var/run/netns/$2 CNI_IFNAME=eth0 \
    CNI_ARGS="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$name" \
    CNI_PATH=/usr/lib/cni in_node porin-cni <<<"$conf"
}

cleanup() {
  set +e
  say "tearing down"
  for p in "${PODS[@]}"; do
    [ -e /var/run/netns/$p ] && cni DEL "$p" && echo "CNI DEL $p: ok"
    ip netns del "$p" 2>/dev/null
  done
  if [ -e /var/run/netns/porin-demo-web ]; then
    CNI_COMMAND=DEL CNI_CONTAINERID=demo-web CNI_NETNS=/var/run/netns/porin-demo-web CNI_IFNAME=eth0 \
      CNI_PATH=/usr/lib/cni in_node porin-cni <<<"$NETCONF" >/dev/null
    ip netns del porin-demo-web 2>/dev/null
  fi
  if [ -n "$AGENT_PID" ]; then kill -TERM "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null; fi
  in_node porin-agent ${AGENTCONF:+--config "$AGENTCONF"} --uninstall >/dev/null 2>&1
  ip netns del porin-demo-ext 2>/dev/null
  ip netns del $NODE 2>/dev/null
  rm -f "$LOG" ${AGENTCONF:+"$AGENTCONF"}
  echo "demo removed"
}

if [ -S "$SOCK" ] && porin status >/dev/null 2>&1; then
  echo "a porin-agent is already running on $SOCK; stop it first (the demo uses the default paths)" >&2
  exit 1
fi
if [ -n "$(ls -A /var/run/porin/endpoints 2>/dev/null)" ]; then
  echo "/var/run/porin holds another agent's endpoints; run 'make uninstall' or stop that node first" >&2
  exit 1
fi
for ns in $NODE porin-demo-web porin-demo-ext; do ip netns del $ns 2>/dev/null || true; done
trap cleanup EXIT

say "starting porin-agent (embedded default config) in node namespace $NODE"
ip netns add $NODE
ip -n $NODE link set lo up
nsenter --net=/var/run/netns/$NODE porin-agent >"$LOG" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 300); do
  porin status >/dev/null 2>&1 && break
  kill -0 $AGENT_PID 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
porin status

say "creating three pods through the CNI plugin (CNI_COMMAND=ADD)"
for p in "${PODS[@]}"; do
  ip netns add "$p"
  echo "CNI ADD $p:"
  cni ADD "$p" | python3 -m json.tool --compact
done
ip_of() { ip -n "$1" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1; }
IP1=$(ip_of ${PODS[0]}); IP2=$(ip_of ${PODS[1]}); IP3=$(ip_of ${PODS[2]})

say "pod1 ($IP1) -> pod2 ($IP2) and pod3 ($IP3): ping"
ip netns exec ${PODS[0]} ping -c 3 -i 0.2 -W 2 "$IP2"
ip netns exec ${PODS[0]} ping -c 3 -i 0.2 -W 2 "$IP3"

say "pod2 -> pod3: TCP (HTTP server in pod3, client in pod2)"
ip netns exec ${PODS[2]} python3 -m http.server 8080 --bind "$IP3" >/dev/null 2>&1 &
SRV=$!
for _ in $(seq 1 100); do
  ip netns exec ${PODS[1]} python3 -c "import socket; socket.create_connection(('$IP3', 8080), 1)" 2>/dev/null && break
  sleep 0.05
done
ip netns exec ${PODS[1]} python3 - "$IP3" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://{sys.argv[1]}:8080/", timeout=5).read()
print(f"GET http://{sys.argv[1]}:8080/ -> {len(body)} bytes")
PY
kill $SRV; wait $SRV 2>/dev/null || true

say "pod3 -> node (gateway 10.244.0.1)"
ip netns exec ${PODS[2]} ping -c 2 -i 0.2 -W 2 10.244.0.1

say "a ClusterIP service: 10.96.0.10:80 -> pod2 and pod3 (each server answers with its name)"
WHOAMI='import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[2].encode(); self.send_response(200)
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((sys.argv[1], 8080), H).serve_forever()'
ip netns exec ${PODS[1]} python3 -c "$WHOAMI" "$IP2" pod2 >/dev/null 2>&1 &
SRV2=$!
ip netns exec ${PODS[2]} python3 -c "$WHOAMI" "$IP3" pod3 >/dev/null 2>&1 &
SRV3=$!
porin service update --id 1 --frontend 10.96.0.10:80 --backends "$IP2:8080,$IP3:8080"
for ip in "$IP2" "$IP3"; do
  for _ in $(seq 1 100); do
    ip netns exec ${PODS[0]} python3 -c "import socket; socket.create_connection(('$ip', 8080), 1)" 2>/dev/null && break
    sleep 0.05
  done
done
echo "pod1 -> http://10.96.0.10/ twenty times, new connection each:"
ip netns exec ${PODS[0]} python3 - <<'PY'
import collections, urllib.request
seen = collections.Counter(
    urllib.request.urlopen("http://10.96.0.10/", timeout=5).read().decode() for _ in range(20)
)
print("  answered by:", dict(sorted(seen.items())))
PY
porin service list
say "porin bpf lb list"
porin bpf lb list
say "porin bpf ct list global --dst 10.96.0.10 (first 3)"
porin bpf ct list global --dst 10.96.0.10 | head -3 || true
kill $SRV2 $SRV3; wait $SRV2 $SRV3 2>/dev/null || true
porin service delete 1

say "porin monitor: pod1 sends from an address that is not its own"
MONERR=$(mktemp /tmp/porin-demo-monitor.XXXXXX)
in_node porin monitor --count 1 --duration 10 2>"$MONERR" &
MON=$!
for _ in $(seq 1 200); do grep -q Listening "$MONERR" && break; sleep 0.05; done
cat "$MONERR"; rm -f "$MONERR"
ip -n ${PODS[0]} addr add 10.244.0.250/32 dev eth0
ip netns exec ${PODS[0]} ping -c 1 -W 1 -I 10.244.0.250 "$IP2" >/dev/null 2>&1 || true
wait $MON || true
ip -n ${PODS[0]} addr del 10.244.0.250/32 dev eth0

say "network policy: pod3 accepts TCP 8080 from pod2 only (a Kubernetes NetworkPolicy)"
POLICY=$(mktemp /tmp/porin-demo-policy.XXXXXX.yaml)
cat >"$POLICY" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: pod3-from-pod2
  namespace: demo
spec:
  podSelector:
    matchLabels: {app: pod3}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: pod2}
    ports:
    - {protocol: TCP, port: 8080}
YAML
cat "$POLICY"
porin apply -f "$POLICY"
porin policy list
porin observe --last 1 >/dev/null 2>&1  # the flow log captures on demand: on from here
ip netns exec ${PODS[2]} python3 -c "$WHOAMI" "$IP3" pod3 >/dev/null 2>&1 &
SRV3=$!
for _ in $(seq 1 100); do
  ip netns exec ${PODS[1]} python3 -c "import socket; socket.create_connection(('$IP3', 8080), 1)" 2>/dev/null && break
  sleep 0.05
done
MONERR=$(mktemp /tmp/porin-demo-monitor.XXXXXX)
in_node porin monitor --type policy-verdict --count 2 --duration 10 2>"$MONERR" &
MON=$!
for _ in $(seq 1 200); do grep -q Listening "$MONERR" && break; sleep 0.05; done
cat "$MONERR"; rm -f "$MONERR"
for p in 1 2; do
  pod=${PODS[$((p - 1))]}
  if ip netns exec "$pod" python3 -c "import socket; socket.create_connection(('$IP3', 8080), 1).close()" 2>/dev/null; then
    echo "pod$p -> pod3:8080  connected"
  else
    echo "pod$p -> pod3:8080  refused by policy (no answer)"
  fi
done
wait $MON || true
say "porin observe --to-pod demo/pod3 --port 8080: the flow log, both pods named"
porin observe --to-pod demo/pod3 --port 8080
say "porin trace --from demo/pod1 --to $IP3:8080/tcp: the node's programs asked, nothing live changed"
porin trace --from demo/pod1 --to "$IP3":8080/tcp
say "Prometheus (/metrics on 127.0.0.1:9962 in the node): the drops by reason"
in_node curl -s http://127.0.0.1:9962/metrics | grep '^porin_drop_count_total' || true
say "porin policy explain --from demo/pod1 --to demo/pod3 --port 8080/tcp"
porin policy explain --from demo/pod1 --to demo/pod3 --port 8080/tcp
say "porin bpf policy get demo/pod3"
porin bpf policy get demo/pod3
porin delete -f "$POLICY"
rm -f "$POLICY"
kill $SRV3; wait $SRV3 2>/dev/null || true

say "host ports: pod web publishes 8080 as 18080 (runtimeConfig.portMappings, as podman -p 18080:8080)"
WEB=porin-demo-web
ip netns add $WEB
WEBCONF=${NETCONF%\}}',"runtimeConfig":{"portMappings":[{"hostPort":18080,"containerPort":8080,"protocol":"tcp"}]}}'
CNI_COMMAND=ADD CNI_CONTAINERID=demo-web CNI_NETNS=/var/run/netns/$WEB CNI_IFNAME=eth0 \
  CNI_PATH=/usr/lib/cni in_node porin-cni <<<"$WEBCONF" | python3 -m json.tool --compact
IPW=$(ip_of $WEB)
ip netns exec $WEB python3 -c "$WHOAMI" "$IPW" web >/dev/null 2>&1 &
SRVW=$!
for _ in $(seq 1 100); do
  ip netns exec ${PODS[0]} python3 -c "import socket; socket.create_connection(('$IPW', 8080), 1)" 2>/dev/null && break
  sleep 0.05
done
echo -n "node -> http://127.0.0.1:18080/ (socket hooks, bpf_sock.c): "
in_node python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:18080/", timeout=5).read().decode())'
porin service list

say "XDP on an uplink: the agent restarted with devices: [eth0], an external host beyond it"
EXT=porin-demo-ext
ip netns add $EXT
ip -n $EXT link set lo up
ip -n $NODE link add eth0 type veth peer name eth0 netns $EXT
ip -n $NODE addr add 198.18.0.1/24 dev eth0
ip -n $NODE link set eth0 up
ip -n $EXT addr add 198.18.0.100/24 dev eth0
ip -n $EXT link set eth0 up
ip netns exec $EXT ethtool -K eth0 tx off >/dev/null  # whole checksums, as from a wire
AGENTCONF=$(mktemp /tmp/porin-demo-agent.XXXXXX.yaml)
echo "devices: [eth0]" >"$AGENTCONF"
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
nsenter --net=/var/run/netns/$NODE porin-agent --config "$AGENTCONF" >>"$LOG" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 600); do
  porin status >/dev/null 2>&1 && break
  kill -0 $AGENT_PID 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
porin status | grep -E "Devices|Host ports"
echo -n "the pods kept working across the restart: pod1 -> pod2: "
ip netns exec ${PODS[0]} ping -c 1 -W 2 -q "$IP2" | grep -o "1 received"
echo "external host -> node: ping, answered in XDP (XDP_TX):"
ip netns exec $EXT ping -c 3 -i 0.2 -W 2 198.18.0.1 | tail -2
porin metrics xdp
echo -n "external host -> http://198.18.0.1:18080/ (the host port, from outside): "
ip netns exec $EXT python3 -c 'import urllib.request; print(urllib.request.urlopen("http://198.18.0.1:18080/", timeout=5).read().decode())'
say "porin prefilter add 198.18.0.100: the external host is dropped in XDP"
porin prefilter add 198.18.0.100
ip netns exec $EXT ping -c 2 -i 0.2 -W 1 198.18.0.1 | tail -2 || true
porin prefilter list
porin prefilter delete 198.18.0.100
echo -n "deleted again: "
ip netns exec $EXT ping -c 1 -W 2 -q 198.18.0.1 | grep -o "1 received"
kill $SRVW; wait $SRVW 2>/dev/null || true
CNI_COMMAND=DEL CNI_CONTAINERID=demo-web CNI_NETNS=/var/run/netns/$WEB CNI_IFNAME=eth0 \
  CNI_PATH=/usr/lib/cni in_node porin-cni <<<"$WEBCONF" && echo "CNI DEL web: ok, host port released"
ip netns del $WEB

say "porin endpoint list"
porin endpoint list
say "porin bpf endpoint list"
porin bpf endpoint list
say "porin metrics list"
porin metrics list
