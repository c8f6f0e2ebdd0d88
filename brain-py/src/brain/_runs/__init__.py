"""Agent runs: what one run is, and what keeps track of all of them.

| module | what |
|---|---|
| ``record.py`` | :class:`RunSpec` (what a client asks), :class:`RunState`, and ``Run``: a |
| | run's record, its events, and the waits that followers of the run use |
| ``manager.py`` | ``RunManager``: admission, the registry of runs, cancellation, the drain |

Nothing is re-exported here: ``manager`` imports the agent, which imports ``record``, and a
package that imported both would import itself in a circle.
"""
