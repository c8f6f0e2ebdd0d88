"""The local LM engine: the local planner's model, shared by every agent in the process.

| module | what |
|---|---|
| ``weights.py`` | where the model comes from (model dir, GGUF, the bundled SmolLM2-135M), the |
| | converted-GGUF cache, loading on CUDA (bf16/fp16) or the CPU (float32) |
| ``engine.py`` | ``Engine``: requests, the scheduler thread (continuous batching), stats |
| ``kv.py`` | ``BatchKV``: the decode batch's KV cache, one row per sequence |
| ``grammar.py`` | the tool-call grammar from the sidecar's tool schemas; llguidance masks |

Flow of one request::

    LocalPlanner.plan ─► Engine.generate (event loop) ─► waiting queue (bounded)
        engine thread: admit ─► prefill (prefix cache) ─► BatchKV row
                       decode step for all rows ─► grammar mask ─► greedy token
                       finished ─► row freed ─► result to the caller's loop
"""
