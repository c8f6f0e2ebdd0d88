"""``make bench``: tandem side by side with pure-Python dispatchers, on one machine, in one run.

Layout (one responsibility per module):

* :mod:`.documents`: the ~100 KB search document, the tiny document and their JSON Schemas
  (also written to ``fixtures/`` for the Rust criterion benchmark).
* :mod:`.tools`: the benchmark's tools, rendered both as the sidecar's ``tools.yaml`` and as
  the Python dispatchers' registry, so every dispatcher validates against the same schemas.
* :mod:`.nginx`: the upstream: Debian's nginx serving static files with keep-alive.
* :mod:`.procstat`: CPU seconds and RSS of a process tree, read from ``/proc``.
* :mod:`.dispatchers`: tandem (``SidecarClient``), python-naive, python-tuned.
* :mod:`.agents`: the agent process ("the brain"): drives a dispatcher and reports.
* :mod:`.runner`: starts the stack for one measurement and collects the numbers.
* :mod:`.scenarios`: the numbered scenarios of issue 7 (and the slot for issue 6's).
* :mod:`.report`, :mod:`.charts`, :mod:`.validate`: tables, JSON, PNG, well-formedness.
"""
