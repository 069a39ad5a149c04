"""`python -m pytest_nsbox doctor [--json]` and the `pytest-nsbox` console script."""

from __future__ import annotations

import sys

USAGE = """usage: pytest-nsbox doctor [--json] [-v] [--timeout S]
       pytest-nsbox usage merge -o OUT.json [--per-machine] FILE.json...
       pytest-nsbox usage report -o OUT.html [--compare BASE.json] [--fail RULES] FILE.json
       pytest-nsbox cgroup-setup --user NAME [--remove]
       pytest-nsbox cgroup-exec [--] COMMAND [ARGS...]
       pytest-nsbox clean [--storage DIR]

commands:
  doctor   what this machine gives boxes (namespaces, mounts, cgroups, netem), with fixes;
           exit status 0 PASS, 1 DEGRADED, 2 FAIL
  usage    merge saved usage files (CI shards, reruns) into one baseline; a report page of
           a saved file (pytest-nsbox usage --help)
  cgroup-setup  as root, once per boot: make cgroups NAME owns, so that NAME's boxes get
           limits without root; prints the prefix NAME runs pytest under
  cgroup-exec   run COMMAND (pytest) in the cgroups cgroup-setup made for you
  clean    remove what boxes left on disk: kept failed boxes (--nsbox-keep-failed) and the
           files of sessions that were killed (default storage /var/tmp/pytest-nsbox-UID)"""


def main(argv: list[str] | None = None) -> int:
    """Run a command; a reader that goes away (``| head``) ends it quietly, as SIGPIPE would."""
    try:
        code = _run(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # inside the try: a late EPIPE surfaces here, not at exit
    except BrokenPipeError:
        import os
        import signal

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush has nowhere to fail
        os.close(devnull)
        return 128 + signal.SIGPIPE
    return code


def _run(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "usage":
        from .plugin.usage.merge import main as usage_main

        return usage_main(args[1:])
    if args[0] in ("cgroup-setup", "cgroup-exec"):
        from . import cgroup_setup

        run = cgroup_setup.main_setup if args[0] == "cgroup-setup" else cgroup_setup.main_exec
        return run(args[1:])
    if args[0] == "clean":
        return _clean(args[1:])
    if args[0] != "doctor":
        print(f"pytest-nsbox: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    from .doctor import main as doctor_main

    return doctor_main(args[1:])


def _clean(args: list[str]) -> int:
    """Remove the kept boxes and the files of dead sessions under the storage root."""
    from .resources.storage import default_root, remove_stale

    root = default_root()
    if args[:1] == ["--storage"] and len(args) == 2:
        root = args[1]
    elif args:
        print(f"pytest-nsbox clean: unknown arguments {' '.join(args)!r}\n{USAGE}",
              file=sys.stderr)
        return 2
    removed = remove_stale(root, kept=True)
    for path in removed:
        print(f"removed {path}")
    print(f"{root}: {len(removed)} removed; sessions still running keep theirs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
