"""The kernel resources a box holds: `cgroups`, `devices` (the device filter) and `net`.

These build on the box's bottom layer (`pytest_nsbox.box`: errors, options, outcome,
channel, remote, fixes, namespaces) and never on its machinery (api, context,
supervise, inside) or the pytest side. Nothing is imported here.
"""
