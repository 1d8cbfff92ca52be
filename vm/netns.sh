#!/bin/bash
# The namespace test of `cargo xtask vm-test`, run inside the VM only (it builds namespaces and
# attaches programs, and the VM has no network device of its own):
#   pgpod  eth0 2001:db8:0:1::a, 169.254.172.10  <-veth->  pgnode pod0h 2001:db8:0:1::1, 169.254.172.1
#   pgnode up0 198.51.100.2                      <-veth->  pginet up0p 198.51.100.1
# `podgate run` in pgnode installs, attaches (XDP on up0, tcx on pod0h) and registers the pod;
# then the pod pings the node over IPv6 and IPv4, and podgate's counters must have moved, which
# proves the attached programs saw the packets.
# Where podgate's tcx attach fails, podgate's pinned programs are also tried with a netlink TC
# (clsact) attach, to tell "the programs do not work here" from "podgate cannot attach here".
# Prints `PGVM netns ...` lines; exit 0 only if everything passed.
set -u
PODGATE=$1
PIN_FS=/run/pgvm-bpf
PIN_ROOT=$PIN_FS/podgate
CFG=/tmp/pgvm-podgate.toml
LOG=/tmp/pgvm-podgate.log
PGPID=

cleanup() {
    [ -n "$PGPID" ] && kill "$PGPID" 2>/dev/null && wait "$PGPID" 2>/dev/null
    for n in pgpod pgnode pginet; do ip netns del "$n" 2>/dev/null; done
}
trap cleanup EXIT

say() { echo "PGVM netns $*"; }
fail() { say "status=fail reason=$1"; exit 1; }

# tcx (BPF_LINK_TYPE_TCX) arrived in Linux 6.6; podgate attaches its TC programs only that way.
read -r maj min _ < <(uname -r | tr '.-' '  ')
if [ "$maj" -gt 6 ] || { [ "$maj" -eq 6 ] && [ "$min" -ge 6 ]; }; then
    say "tcx=present kernel=$(uname -r)"
else
    say "tcx=absent kernel=$(uname -r) note=no-tcx-podgate-falls-back-to-netlink-clsact"
fi

# Bpffs outside /sys: `ip netns exec` remounts /sys for the namespace.
mkdir -p "$PIN_FS" && mount -t bpf bpf "$PIN_FS" || fail bpffs-mount

set -e
for n in pgpod pgnode pginet; do ip netns add "$n"; done
ip -n pgnode link add pod0h type veth peer name eth0 netns pgpod
ip -n pgnode link add up0 type veth peer name up0p netns pginet
ip -n pgpod addr add 2001:db8:0:1::a/64 dev eth0 nodad
ip -n pgpod addr add 169.254.172.10/22 dev eth0
ip -n pgnode addr add 2001:db8:0:1::1/64 dev pod0h nodad
ip -n pgnode addr add 169.254.172.1/22 dev pod0h
ip -n pgnode addr add 198.51.100.2/24 dev up0
ip -n pginet addr add 198.51.100.1/24 dev up0p
for l in "pgpod eth0" "pgpod lo" "pgnode pod0h" "pgnode up0" "pgnode lo" "pginet up0p"; do
    set -- $l
    ip -n "$1" link set "$2" up
done
set +e

cat > "$CFG" <<CFG
[node]
uplink = "up0"
ipv4 = "198.51.100.2"
pod_prefix = "2001:db8:0:1::/80"
pin_root = "$PIN_ROOT"

[[pods]]
name = "vmpod"
ipv6 = "2001:db8:0:1::a"
ipv4 = "169.254.172.10"
veth = "pod0h"
CFG

ip netns exec pgnode "$PODGATE" run --config "$CFG" >"$LOG" 2>&1 &
PGPID=$!
for _ in $(seq 1 120); do
    grep -q "podgate: running" "$LOG" && break
    kill -0 "$PGPID" 2>/dev/null || break
    sleep 0.5
done
sed 's/^/podgate| /' "$LOG"

total() {
    "$PODGATE" --pin-root "$PIN_ROOT" stats --json 2>/dev/null |
        grep -o '"value": *[0-9]*' | awk -F: '{s += $2} END {print s + 0}'
}

# Pings pod -> node over both families; ok when both answer and podgate's counters moved by at
# least the 12 packets (3 requests + 3 replies per family) that cross pod0h.
ping_through() {
    local tag=$1 before after p6 p4
    before=$(total)
    ip netns exec pgpod ping -6 -c 3 -i 0.2 -W 2 2001:db8:0:1::1 >/tmp/ping6.log 2>&1; p6=$?
    ip netns exec pgpod ping -4 -c 3 -i 0.2 -W 2 169.254.172.1 >/tmp/ping4.log 2>&1; p4=$?
    after=$(total)
    sed "s/^/$tag ping6| /" /tmp/ping6.log
    sed "s/^/$tag ping4| /" /tmp/ping4.log
    "$PODGATE" --pin-root "$PIN_ROOT" stats | sed "s/^/$tag stats| /"
    say "$tag ping6=$([ $p6 = 0 ] && echo ok || echo fail) ping4=$([ $p4 = 0 ] && echo ok || echo fail) counted=$((after - before))"
    [ "$p6" = 0 ] && [ "$p4" = 0 ] && [ $((after - before)) -ge 12 ]
}

if grep -q "podgate: running" "$LOG"; then
    say "attach=ok how=podgate-run"
    ping_through tcx || fail ping-or-counters
    say "status=pass"
    exit 0
fi

err=$(grep -m1 "podgate: error:" "$LOG" | sed 's/.*podgate: error: //' | tr ' ' '_')
if ! grep -q "bpf_mprog_attach\|tcx\|BPF_LINK_CREATE" "$LOG"; then
    say "attach=fail error=$err"
    fail podgate-run-did-not-start
fi
say "attach=fail reason=tc-attach-failed error=$err"
# What a netlink-TC fallback would give on this kernel: podgate's own programs, which `podgate
# run` pinned before the attach failed, attached the pre-tcx way (clsact + cls_bpf, direct action).
legacy=fail
if ip netns exec pgnode tc qdisc add dev pod0h clsact &&
    ip netns exec pgnode tc filter add dev pod0h ingress bpf direct-action object-pinned "$PIN_ROOT/progs/pod_ingress" &&
    ip netns exec pgnode tc filter add dev pod0h egress bpf direct-action object-pinned "$PIN_ROOT/progs/pod_egress"; then
    ip netns exec pgnode tc filter show dev pod0h ingress | sed 's/^/legacy tc| /'
    ping_through legacy-tc && legacy=pass
fi
say "legacy-tc=$legacy"
fail tc-attach-failed
