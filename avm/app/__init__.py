"""The shell: what a person at a terminal meets.

`cli` (the ``avm`` command), `launcher` (``avm run``), `dashboard` and `figures` (its live view),
`store_report` (``avm inspect``), `store_check` (``avm verify``), `journal_report` (``avm inspect STORE
AGENT``, ``avm replay``, ``avm erase``), `bench_runner` (``avm bench``) and `spec` (run specs). Nothing
below the shell imports it: the VM, its kernel and its libraries stand on their own.
"""
