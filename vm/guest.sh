#!/bin/bash
# Runs inside the vm-test VM, chrooted into the host's read-only /, as root. Reads the plan the
# host wrote (one step per line) and prints one `PGVM ...` line per result on the console, which
# the host parses; everything else on the console is context for the log.
#   verify <path>          loader that loads every program on its own (tests/examples/vm_verify.rs)
#   test <name> <path>     a libtest binary (cargo test --no-run)
#   netns <podgate> <dir>  the namespace test (vm/netns.sh in <dir>)
# Each step has its own timeout so one hung binary cannot eat the whole VM budget.
set -u
PLAN=$1
STEP_TIMEOUT=${PGVM_STEP_TIMEOUT:-150}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=0 TERM=dumb NO_COLOR=1
cd /tmp

echo "PGVM guest kernel=$(uname -r)"
while read -r kind a b c; do
    case "$kind" in
        verify)
            echo "PGVM step-begin verify"
            timeout -k 5 "$STEP_TIMEOUT" "$a"
            echo "PGVM step-end verify rc=$?"
            ;;
        test)
            echo "PGVM step-begin test bin=$a"
            # One test thread: the VM has one vCPU and the tests share nothing but the kernel.
            timeout -k 5 "$STEP_TIMEOUT" "$b" --test-threads=1 2>&1
            echo "PGVM step-end test bin=$a rc=$?"
            ;;
        netns)
            echo "PGVM step-begin netns"
            timeout -k 5 "$STEP_TIMEOUT" /bin/bash "$b/netns.sh" "$a" 2>&1
            echo "PGVM step-end netns rc=$?"
            ;;
        "" | "#"*) ;;
        *) echo "PGVM plan-error line=$kind" ;;
    esac
done < "$PLAN"
