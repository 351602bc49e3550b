#!/usr/bin/env bash
# The main job on the embedded default: installs what it needs, builds, assembles a bilingual
# corpus from Debian text packages (the King James Bible, English and Chinese fortunes), trains a
# sentencepiece tokenizer, preprocesses the corpus into token files, and pretrains the tiny GLM
# of configs/demo.yaml with the GLM-130B objective on 8 local MPI ranks (tensor 2 × pipeline 2 ×
# data 2). It reports the validation loss against a unigram model of the same data, then fills
# blanks ([MASK] spans and a [gMASK] continuation) with the model it just trained, on the layout
# it was trained on (each data-parallel replica fills its share of the prompts) with a KV cache
# and beam search.
#   STEPS=400 (optimizer steps), RANKS=8, RUN_DIR=run/demo (must match configs/demo.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
GLMRT="$PWD/$BUILD_DIR/glmrt"
RUN=run/demo
STEPS=${STEPS:-400}
RANKS=${RANKS:-8}

corpus_packages=(fortunes fortunes-zh bible-kjv)
missing=()
for p in "${corpus_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "demo: installing the corpus packages ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$RUN"
if [[ ! -s $RUN/corpus.jsonl ]]; then
  echo "== corpus"
  python3 scripts/make_demo_corpus.py "$RUN/corpus.jsonl"
fi
if [[ ! -s $RUN/tokenizer.model ]]; then
  echo "== glmrt train-tokenizer (sentencepiece, 3000 pieces)"
  "$GLMRT" train-tokenizer --input "$RUN/corpus.jsonl" --vocab-size 3000 --character-coverage 0.99 \
    --output "$RUN/tokenizer.model"
fi
if [[ ! -s $RUN/corpus.idx ]]; then
  echo "== glmrt preprocess"
  "$GLMRT" preprocess --config configs/demo.yaml --input "$RUN/corpus.jsonl" --output "$RUN/corpus"
fi
echo "== glmrt data-sample (two of the samples the model learns from)"
"$GLMRT" data-sample --config configs/demo.yaml --count 2 | cut -c1-300

echo "== glmrt train: $RANKS ranks, $STEPS steps"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mpiexec -n "$RANKS" "$GLMRT" train --config configs/demo.yaml --set train.steps="$STEPS" \
  --output-weights "$RUN/trained.safetensors" | tee "$RUN/train.log"

echo "== summary"
grep -E "unigram baseline|final validation loss" "$RUN/train.log"
echo "metrics: $RUN/metrics.jsonl, loss curves: $RUN/metrics.png, weights: $RUN/trained.safetensors"

echo "== glmrt generate: blank filling with the model just trained ($RANKS ranks: tensor 2 x pipeline 2 x data $((RANKS / 4)))"
cat > "$RUN/prompts.txt" <<'PROMPTS'
In the beginning God created the [MASK] and the earth.
And God said, Let there be [MASK]: and there was light.
The LORD is my shepherd; I shall not [MASK].
A fool and his [MASK] are soon parted.
For God so loved the world, [gMASK]
PROMPTS
mpiexec -n "$RANKS" "$GLMRT" generate --config configs/demo.yaml --weights "$RUN/trained.safetensors" \
  --tensor 2 --pipeline 2 --data auto --input-file "$RUN/prompts.txt" \
  --strategy beam --deterministic --num-beams 4 --no-repeat-ngram-size 3 --out-seq-length 64
