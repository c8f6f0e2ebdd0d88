#!/usr/bin/env bash
# The local planner's engine on a GPU: the same code as on the CPU (bf16, continuous
# batching, per-row KV, grammar masks), then the batching benchmark (1 vs 16 at once).
#
#   tests/gpu/check.sh                    # with the bundled model (needs it installed)
#   CONFIG_DIR=dir tests/gpu/check.sh     # random weights, architecture from dir's
#                                         # config.json + tokenizer files (the 98 MB GGUF
#                                         # need not travel to the GPU machine)
#
# Needs torch with CUDA, transformers, llguidance; PYTHONPATH=brain-py/src when the
# brain is not installed. Prints JSON; exits non-zero if the engine is not on CUDA or the
# 16-way decode is not faster than one at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
export PYTHONPATH=${PYTHONPATH:-brain-py/src}
args=(--device cuda --concurrency "${CONCURRENCY:-16}" --tokens "${TOKENS:-64}")
if [[ -n "${CONFIG_DIR:-}" ]]; then
	args+=(--random-weights --config-dir "$CONFIG_DIR")
fi
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name(0))'
out=$("$PY" brain-py/scripts/engine_bench.py "${args[@]}")
echo "$out"
"$PY" - "$out" <<'PYEOF'
import json, sys
r = json.loads(sys.argv[1])
assert r["device"].startswith("cuda"), r["device"]
assert "bfloat16" in r["dtype"] or "float16" in r["dtype"], r["dtype"]
assert r["speedup_decode"] > 1.0, r
print(f"ok: decode {r['speedup_decode']:.1f}x at concurrency 16 vs 1 on {r['device']}")
PYEOF
