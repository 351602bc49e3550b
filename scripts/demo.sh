#!/usr/bin/env bash
# The main job on the embedded default: installs, builds, then runs the tiny GLM
# (configs/tiny.yaml): seeded GLM-130B initialisation and a forward pass over a batch holding a
# [gMASK] row and a packed row of two sub-sequences.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
RUN=${RUN_DIR:-run/demo}
mkdir -p "$RUN"
GLMRT="$BUILD_DIR/glmrt"

echo "== glmrt init: tiny GLM, seed 1234"
"$GLMRT" init --config configs/tiny.yaml --output "$RUN/init.safetensors" --seed 1234

# Row 0: 10 context tokens, [gMASK] (505), sop (508), 4 generated tokens; sep = 11 (the context
# and [gMASK] are bidirectional). Row 1: two packed segments of 8 tokens with seps 3 and 8.
cat > "$RUN/batch.json" <<'JSON'
{"tokens": [[11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 505, 508, 30, 31, 32, 33],
            [40, 41, 504, 43, 508, 42, 509, 0, 50, 51, 52, 53, 54, 55, 56, 57]],
 "position_ids": [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
                  [0, 1, 2, 3, 2, 2, 2, 2, 0, 1, 2, 3, 4, 5, 6, 7]],
 "sep": [[11], [4, 8]],
 "segment_lengths": [[16], [8, 8]]}
JSON
echo "== glmrt forward: 2 rows × 16 tokens"
"$GLMRT" forward --config configs/tiny.yaml --weights "$RUN/init.safetensors" \
  --input "$RUN/batch.json" --output "$RUN/logits.safetensors"
echo "== done: logits in $RUN/logits.safetensors"
