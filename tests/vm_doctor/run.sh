#!/bin/bash
# VM lane of the doctor: boot ../shared/vmlab once per mode and check the verdict there
# (tests/test_doctor.py::test_vm_verdict, which also prints the report).
#   tests/vm_doctor/run.sh [root|delegated|undelegated|nouserns|nouserns-user ...]
#   root           cgroup v2 as root                        -> PASS (exit 0)
#   delegated      user tester, delegated cgroup subtree    -> PASS (exit 0)
#   undelegated    user tester, no delegation               -> DEGRADED (exit 1): cgroup-setup fix
#   nouserns       root, `sysctl -w user.max_user_namespaces=0` -> FAIL (exit 2)
#   nouserns-user  user tester, the same sysctl on the kernel command line -> FAIL (exit 2)
# Env: VMLAB (path to run-in-vm.sh), LANE_TIMEOUT (seconds per VM, default 600).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VMLAB=${VMLAB:-$REPO/../shared/vmlab/run-in-vm.sh}
[ -x "$VMLAB" ] || VMLAB=/work/shared/vmlab/run-in-vm.sh
PY=$REPO/.venv/bin/python
MODES=("$@"); ((${#MODES[@]})) || MODES=(root delegated undelegated nouserns nouserns-user)
status=0
for mode in "${MODES[@]}"; do
  pre=""
  case "$mode" in
    root) flags=();;
    delegated) flags=(--user tester --delegate --open-root);;
    undelegated) flags=(--user tester --open-root);;
    nouserns) flags=(); pre="sysctl -w user.max_user_namespaces=0 >/dev/null &&";;
    nouserns-user) flags=(--user tester --open-root --append sysctl.user.max_user_namespaces=0);;
    *) echo "vm_doctor: unknown mode $mode" >&2; exit 2;;
  esac
  echo "=== doctor VM lane: $mode ==="
  start=$(date +%s)
  (cd "$REPO" && "$VMLAB" "${flags[@]}" --timeout "${LANE_TIMEOUT:-600}" -- /bin/sh -c "
    $pre cd '$REPO' && exec env NSBOX_DOCTOR_VM_MODE='$mode' PYTHONDONTWRITEBYTECODE=1 \
      '$PY' -m pytest tests/test_doctor.py -m vm -p no:cacheprovider -q -s -rs")
  rc=$?
  echo "=== doctor VM lane $mode: exit $rc in $(( $(date +%s) - start )) s ==="
  ((rc)) && status=1
done
exit $status
