#!/bin/sh
# VM lane of the network tests: netem faults (this kernel lacks sch_netem), as root and
# as an unprivileged user. Boots ../shared/vmlab twice (~3 s each); prints the figures.
#   tests/vm_net/run.sh [extra pytest args]
set -eu
cd "$(dirname "$0")/../.."
VM="${VMLAB:-$(cd .. && pwd)/shared/vmlab/run-in-vm.sh}"
[ -x "$VM" ] || VM=/work/shared/vmlab/run-in-vm.sh  # a clone that has no shared/ beside it
PY="$PWD/.venv/bin/python"
TESTS="tests/vm_net tests/test_net.py"
SELECT="not xdist and not nothing_left"  # slow inner sessions: the native lane covers them
status=0
for who in root tester; do
    echo "== vm_net as $who"
    if [ "$who" = root ]; then set --; else set -- --user tester --open-root; fi
    "$VM" "$@" --timeout 1200 -- "$PY" -m pytest $TESTS -k "$SELECT" -p no:cacheprovider \
        -p no:rerunfailures -q -rs -s -W ignore::pytest.PytestUnraisableExceptionWarning \
        || status=$?
done
exit $status
