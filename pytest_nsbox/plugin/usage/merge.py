"""``pytest-nsbox usage merge`` and ``pytest-nsbox usage report``: saved usage files from
the shards of a CI matrix (and their reruns) made into one baseline, and a report page of
any saved file, merged or not, against a baseline.

Figures from different kinds of machine do not compare (a v1 cgroup counts memory unlike
v2; 2 CPUs are not 4), so files of different kinds are refused unless each kind is kept
apart (``--per-machine``). A host name is not a kind: every runner of a matrix has its own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from .baseline import Baseline, BaselineError, document, load, write_atomically

USAGE = """usage: pytest-nsbox usage merge -o OUT.json [--per-machine] FILE.json...
       pytest-nsbox usage report -o OUT.html [--compare BASE.json] [--fail RULES] FILE.json

  merge    one baseline from the files --nsbox-usage-save wrote in shards (and reruns): a
           test in several files keeps its latest run; files of different machines are
           refused, or with --per-machine merged per machine (OUT.<machine>.json each)
  report   the HTML page of a saved file, against BASE when given (the comparison is
           printed too; exit status 1 when a test is beyond a threshold, as in pytest)"""

#: what makes two files' figures comparable (the machine's keys, then the file's)
MACHINE_KEYS = ("system", "arch", "cpus", "cgroup", "root")


class MergeError(ValueError):
    """Files that cannot be merged; the message says which and why."""


def kind(baseline: Baseline) -> dict[str, Any]:
    """The kind of machine a file was measured on (not its host name)."""
    machine = baseline.meta.get("machine")
    machine = machine if isinstance(machine, dict) else {}
    found = {key: machine.get(key) for key in MACHINE_KEYS}
    python = str(baseline.meta.get("python", ""))
    found["python"] = ".".join(python.split(".")[:2])  # 3.13.5 and 3.13.7 measure alike
    found["python_implementation"] = baseline.meta.get("python_implementation")
    return found


def slug(machine: dict[str, Any]) -> str:
    """A file-name part for a kind of machine: linux-x86_64-2cpus-cgroup-v1-root-py3.13."""
    parts = [machine.get("system"), machine.get("arch"), f"{machine.get('cpus')}cpus",
             f"cgroup-{machine.get('cgroup')}", "root" if machine.get("root") else "user",
             f"py{machine.get('python')}"]
    text = "-".join(str(part) for part in parts if part is not None).lower()
    return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in text)


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ", ".join(f"{key} {b[key]} against {a[key]}" for key in a if a[key] != b.get(key))


@dataclass
class Merged:
    """One merged baseline: its document, and what the merge had to decide."""

    machine: dict[str, Any]
    document: dict[str, Any]
    notes: list[str]


def merge(files: list[Baseline]) -> Merged:
    """One document from `files` of one kind of machine; a test in several keeps the run
    of the latest file (by its "created" time, then by its place in `files`)."""
    first = files[0]
    machine = kind(first)
    for other in files[1:]:
        if kind(other) != machine:
            raise MergeError(
                f"{other.path} was measured on another kind of machine than {first.path} "
                f"({_differences(machine, kind(other))}): their figures do not compare; "
                "merge each kind apart with --per-machine")
    order = sorted(range(len(files)), key=lambda i: (str(files[i].meta.get("created", "")), i))
    entries: dict[str, dict[str, Any]] = {}
    rows = {}
    source: dict[str, int] = {}
    replaced: dict[tuple[int, int], list[str]] = {}
    for index in order:
        for nodeid, entry in files[index].entries.items():
            if nodeid in source:
                replaced.setdefault((index, source[nodeid]), []).append(nodeid)
            entries.pop(nodeid, None)
            entries[nodeid] = entry
            rows[nodeid] = files[index].rows[nodeid]
            source[nodeid] = index
    notes = []
    for (winner, loser), nodeids in replaced.items():
        shown = ", ".join(nodeids[:3]) + (f" and {len(nodeids) - 3} more"
                                          if len(nodeids) > 3 else "")
        notes.append(f"{len(nodeids)} test{'s' * (len(nodeids) != 1)} in both "
                     f"{files[loser].path} and {files[winner].path}: the later run wins "
                     f"({files[winner].path}, created {files[winner].meta.get('created')}): "
                     f"{shown}")
    latest = files[order[-1]].meta
    statuses = [meta.get("exitstatus") for meta in
                (f.meta.get("session") or {} for f in files) if isinstance(meta, dict)]
    session = {"exitstatus": max((s for s in statuses if isinstance(s, int)), default=0),
               "args": [], "workers": None, "merged": len(files)}
    doc = document(rows, session)
    for key in ("machine", "python", "python_implementation", "pytest", "pytest_nsbox"):
        if key in latest:
            doc[key] = latest[key]
    hosts = sorted({str((f.meta.get("machine") or {}).get("hostname")) for f in files})
    if isinstance(doc.get("machine"), dict) and len(hosts) > 1:
        doc["machine"] = {**doc["machine"], "hostname": ", ".join(hosts)}
    doc["merged_from"] = [{"file": f.path, "created": f.meta.get("created"),
                           "hostname": (f.meta.get("machine") or {}).get("hostname"),
                           "tests": len(f.rows),
                           "args": (f.meta.get("session") or {}).get("args")} for f in files]
    doc["tests"] = entries
    return Merged(machine, doc, notes)


def _load_all(paths: list[str]) -> list[Baseline]:
    return [load(path) for path in paths]


def _out_path(out: str, machine: dict[str, Any]) -> str:
    stem, dot, suffix = out.rpartition(".")
    name = slug(machine)
    return f"{stem}.{name}.{suffix}" if dot and "/" not in suffix else f"{out}.{name}"


def merge_command(args: list[str]) -> int:
    """``usage merge``: write the merged file(s), say what was decided."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="pytest-nsbox usage merge")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.json")
    parser.add_argument("--per-machine", action="store_true",
                        help="merge the files of each kind of machine apart")
    parser.add_argument("files", nargs="+", metavar="FILE.json")
    options = parser.parse_args(args)
    try:
        files = _load_all(options.files)
        groups: list[list[Baseline]] = []
        if options.per_machine:
            by_kind: dict[str, list[Baseline]] = {}
            for baseline in files:
                by_kind.setdefault(json.dumps(kind(baseline), sort_keys=True),
                                   []).append(baseline)
            groups = list(by_kind.values())
        else:
            groups = [files]
        merged = [merge(group) for group in groups]
    except (BaselineError, MergeError) as exc:
        print(f"pytest-nsbox usage merge: {exc}", file=sys.stderr)
        return 2
    for result in merged:
        out = _out_path(options.output, result.machine) if options.per_machine \
            else options.output
        for note in result.notes:
            print(note)
        write_atomically(out, json.dumps(result.document, indent=1) + "\n")
        count = len(result.document["merged_from"])
        print(f"usage of {len(result.document['tests'])} boxed tests from {count} "
              f"file{'s' * (count != 1)} merged into {out}")
    return 0


def report_command(args: list[str]) -> int:
    """``usage report``: the HTML page of a saved (or merged) file, maybe against a baseline."""
    import argparse

    from .compare import RulesError, compare, default_thresholds, parse_rules, render_table
    from .html import render

    parser = argparse.ArgumentParser(prog="pytest-nsbox usage report")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.html")
    parser.add_argument("--compare", metavar="BASE.json")
    parser.add_argument("--fail", metavar="RULES", help="thresholds, as --nsbox-usage-fail")
    parser.add_argument("file", metavar="FILE.json")
    options = parser.parse_args(args)
    try:
        now = load(options.file)
        base = load(options.compare) if options.compare else None
        thresholds = parse_rules(options.fail, default_thresholds())
    except (BaselineError, RulesError) as exc:
        print(f"pytest-nsbox usage report: {exc}", file=sys.stderr)
        return 2
    base_rows = base.rows if base is not None else None
    comparison = compare(base_rows, now.rows, thresholds)
    meta = dict(now.meta)
    if base is not None:
        meta["baseline"] = base.path
        print(f"usage of {now.path} against {base.path}")
        for line in render_table(comparison, base_rows, now.rows):
            print(line)
    write_atomically(options.output, render(now.rows, base_rows, comparison, thresholds, meta))
    print(f"usage report written to {options.output}")
    return 1 if comparison.regressions else 0


def main(args: list[str]) -> int:
    """``pytest-nsbox usage COMMAND ...``."""
    if args and args[0] == "merge":
        return merge_command(args[1:])
    if args and args[0] == "report":
        return report_command(args[1:])
    print(USAGE, file=sys.stderr if args[:1] not in (["-h"], ["--help"]) else sys.stdout)
    return 0 if args[:1] in (["-h"], ["--help"]) else 2


__all__ = ["MergeError", "Merged", "kind", "main", "merge", "slug"]
