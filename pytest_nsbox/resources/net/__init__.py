"""A box's network: link faults (`netem`), forwarded ports (`relay`, `listeners`) and
test networks of several hosts (`topology`). Nothing is imported here (pyroute2 costs
~200 ms, and only the modules that need it import it, inside their functions).
"""
