"""The benchmark harness of a source checkout: run it as `python -m fcn_graph.bench`.

Not part of the installed library (setup.py ships fcn_graph only), and no
library module imports it. `cases` names what is measured, `worker` times one
(variant, case) in its own process, `harness` spawns the workers and collects
their records, `report` formats the table.
"""
