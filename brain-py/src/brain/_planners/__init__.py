"""Planners: what proposes each step of a run.

| module | what |
|---|---|
| ``base.py`` | the :class:`Planner` protocol and what it sees and proposes (``PlanningState``, |
| | ``Step``, ``ToolCallRequest``, ``Observation``) |
| ``openai.py`` | ``OpenAIPlanner``: chat completions through the sidecar's ``llm`` tool |
| ``json_steps.py`` | steps as one schema-constrained JSON object (models without tool calls) |
| ``local.py`` | ``LocalPlanner``: a local causal LM (``brain._engine``), replies constrained |
| | to the tools' schemas, every run's decoding batched together |
| ``router.py`` | ``RouterPlanner``: sentence embeddings pick the tool, its schema fills it |
| ``factory.py`` | ``build_planner``: the planner a command line (``--planner``) asks for |

Nothing is re-exported here: the planners import the agent (``ToolCaller``), which imports
``base``, and a package that imported them all would import itself in a circle.
"""
