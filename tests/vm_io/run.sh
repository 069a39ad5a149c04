#!/bin/sh
# VM lane of the io and freezer tests: cgroup v2 (io.max, io.stat, cgroup.freeze).
# The VM has no disk, so a brd RAM disk (/dev/ram0, 64 MiB) is loaded from the kernel
# package vmlab already unpacked, and the io tests throttle it (NSBOX_IO_DEVICE).
# Boots ../shared/vmlab once per lane (~3 s each); prints the measured figures.
#   tests/vm_io/run.sh [root|delegated ...]   (default: both)
set -eu
cd "$(dirname "$0")/../.."
VM="${VMLAB:-$(cd .. && pwd)/shared/vmlab/run-in-vm.sh}"
[ -x "$VM" ] || VM=/work/shared/vmlab/run-in-vm.sh  # a clone that has no shared/ beside it
[ -x "$VM" ] || VM=/work/shared/vmlab/run-in-vm.sh
PY="$PWD/.venv/bin/python"
ASSETS="${VMLAB_ASSETS:-$HOME/.cache/vmlab}"
BRD=$(ls "$ASSETS"/kernel-root/lib/modules/*/kernel/drivers/block/brd.ko 2>/dev/null | head -1)
TESTS="tests/test_io.py tests/test_freezer.py"
[ $# -gt 0 ] || set -- root delegated
status=0
for lane in "$@"; do
    echo "== vm_io lane: $lane"
    case "$lane" in
    root)
        # shellcheck disable=SC2016
        "$VM" --timeout 900 -- /bin/sh -c '
            py=$1; brd=$2; shift 2
            if [ -n "$brd" ] && insmod "$brd" rd_nr=1 rd_size=65536 && [ -b /dev/ram0 ]; then
                export NSBOX_IO_DEVICE=/dev/ram0
            else
                echo "vm_io: no brd module: the io tests will say what is lacking"
            fi
            NSBOX_STRICT=1 NSBOX_FREEZE_TIMEOUT=8 PYTHONDONTWRITEBYTECODE=1 "$py" -m pytest "$@"
            rc=$?
            left=$(find /sys/fs/cgroup -name "*nsbox*" 2>/dev/null)
            [ -z "$left" ] || { echo "LEFT BEHIND: $left"; rc=1; }
            exit $rc' vm_io "$PY" "$BRD" $TESTS -p no:cacheprovider -p no:randomly \
            -p no:rerunfailures -q -rs -s || status=$?;;
    delegated)
        "$VM" --user tester --delegate --open-root --timeout 900 -- \
            env NSBOX_STRICT=1 NSBOX_FREEZE_TIMEOUT=8 PYTHONDONTWRITEBYTECODE=1 "$PY" -m pytest $TESTS \
            -p no:cacheprovider -p no:randomly -p no:rerunfailures -q -rs -s || status=$?;;
    *) echo "vm_io: unknown lane $lane" >&2; exit 2;;
    esac
done
exit $status
