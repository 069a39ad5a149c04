"""The box itself: run a function in fresh namespaces and bring its outcome back.

Two layers. At the bottom, modules that import nothing of nsbox's but each other:
`errors`, `units`, `options` (every option's parser and `BoxOptions`), `outcome`
(`Usage`, `Outcome`), `channel` (frames over a pipe), `remote` (an exception's way
back), `fixes` (what to tell a user whose machine refused a box) and `namespaces`. The
kernel resources (`pytest_nsbox.resources`) build on those. On top, the machinery that
uses both: `api` (`Box`), `context` (`current_box`), `supervise` (the parent's side)
and `inside` (the box's init and test process).

Nothing is imported here: the pytest plugin loads the package in every run, and a run
that boxes nothing does not pay for the box machinery.
"""
