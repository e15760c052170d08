"""`pgvault lab`: replay real disasters on a live cluster in a sandbox on this host and prove,
after each, that every backup verifies and restores (docs/lab.md).

world.py (the cluster, sites, proxies, policy; teardown), ledger.py (the load and its record
of commits), scenarios.py (the faults), checks.py (the pass criterion), run.py (`lab run`,
`lab soak`), report.py (JUnit XML, JSON, HTML)."""
