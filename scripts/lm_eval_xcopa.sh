#!/usr/bin/env bash
# XCOPA through lm-evaluation-harness on an exported PolyLM run, offline, compared item by item with evaluate.py.
#
#   scripts/lm_eval_xcopa.sh [RUN_DIR=out/toy] [LIMIT=0 (all 500 per language)] [LANGS=id,it,th,tr,vi,zh]
#
# 1. export.py writes RUN_DIR-hf/ (a plain GPT2LMHeadModel + tokenizer.json, no remote code);
# 2. lm_eval scores the bundled data/eval/xcopa jsonl through the custom tasks in scripts/lm_eval_tasks/ (the harness's
#    own xcopa template, dataset_path json + data_files: nothing is downloaded);
# 3. compare.py rebuilds every logged request with evaluate.py's functions on RUN_DIR and prints both accuracies, the
#    largest log-likelihood difference and any item whose prediction differs (docs/BENCHMARKS.md (export section)).
# Needs: pip install lm-eval==0.4.13 accelerate==1.15.0 peft==0.21.2 transformers==5.23.0 safetensors==0.8.0
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-out/toy}
LIMIT=${2:-0}
LANGS=${3:-id,it,th,tr,vi,zh}
PY=${PYTHON:-python}
HF="${RUN%/}-hf"
LOGS="${RUN%/}-lm_eval"                    # outside the export dir: export.py replaces only its own files
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-$LOGS/.datasets_cache}"

"$PY" export.py --ckpt "$RUN" --out "$HF" --overwrite=True
TASKS=$(echo "$LANGS" | sed 's/\([a-z]*\)/xcopa_local_\1/g')
LIMIT_ARG=()
[ "$LIMIT" != 0 ] && LIMIT_ARG=(--limit "$LIMIT")
rm -rf "$LOGS/lm_eval"
"$PY" -m lm_eval --model hf --model_args "pretrained=$HF,dtype=float32" --device cpu --batch_size 16 \
    --include_path scripts/lm_eval_tasks --tasks "$TASKS" "${LIMIT_ARG[@]}" --output_path "$LOGS/lm_eval" --log_samples
"$PY" scripts/lm_eval_tasks/compare.py --ckpt "$RUN" --samples "$LOGS/lm_eval" --langs "$LANGS"
