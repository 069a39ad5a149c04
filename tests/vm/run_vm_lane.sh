#!/bin/bash
# run_vm_lane.sh [root|delegated|undelegated ...]
# Run the `vm` tests and tests/test_cgroups.py in the pure cgroup v2 VM (../shared/vmlab),
# once per mode (default: all three), then the cgroup figures (tests/vm/cgroup_bench.py),
# and fail if any *nsbox* cgroup is left under /sys/fs/cgroup in the VM.
#   root         v2 as root, started in the leaf /vmlab.slice/cmd.scope
#   delegated    user tester in a delegated user@1001.service subtree (limits must work)
#   undelegated  user tester, no delegation (a limit must raise CgroupUnavailable naming
#                cgroup-setup; without limits boxes fall back to wait4 accounting)
# Env: VMLAB (path to run-in-vm.sh), LANE_TESTS (default: tests), PYTEST_ARGS (extra
# pytest args), LANE_TIMEOUT (seconds per VM, default 900).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VMLAB=${VMLAB:-$REPO/../shared/vmlab/run-in-vm.sh}
[ -x "$VMLAB" ] || VMLAB=/work/shared/vmlab/run-in-vm.sh
PY=$REPO/.venv/bin/python
MODES=("$@"); ((${#MODES[@]})) || MODES=(root delegated undelegated)
status=0
for mode in "${MODES[@]}"; do
  case "$mode" in
    root) flags=();;
    delegated) flags=(--user tester --delegate --open-root);;
    undelegated) flags=(--user tester --open-root);;
    *) echo "run_vm_lane: unknown mode $mode" >&2; exit 2;;
  esac
  echo "=== VM lane: $mode ==="
  start=$(date +%s)
  # shellcheck disable=SC2016
  (cd "$REPO" && "$VMLAB" "${flags[@]}" --timeout "${LANE_TIMEOUT:-900}" -- /bin/sh -c '
    cd "$1"; mode=$2; shift 2
    env NSBOX_VM_MODE="$mode" PYTHONPATH=tests/vm PYTHONDONTWRITEBYTECODE=1 \
      "$0" -m pytest -p no:cacheprovider -p lane_plugin -q -rs "$@"
    rc=$?
    env PYTHONPATH=. BENCH_ROUNDS=100 "$0" tests/vm/cgroup_bench.py || rc=1
    left=$(find /sys/fs/cgroup -name "*nsbox*" 2>/dev/null)
    if [ -n "$left" ]; then echo "LEFT BEHIND in $mode lane:"; echo "$left"; rc=1; fi
    exit $rc' "$PY" "$REPO" "$mode" ${PYTEST_ARGS:-} ${LANE_TESTS:-tests})
  rc=$?
  echo "=== VM lane $mode: exit $rc in $(( $(date +%s) - start )) s ==="
  ((rc)) && status=1
done
exit $status
