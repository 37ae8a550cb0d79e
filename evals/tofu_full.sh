#!/usr/bin/env bash
# The full-size TOFU protocol on the default model: fine-tune on all 200 authors, retain models,
# unlearn with grad_diff / npo / simnpo, evaluate everything (no --authors, no --eval-limit).
# Sized for a GPU (about 5 minutes per split on one H200); on 2 CPU cores it would take days.
#
#   evals/tofu_full.sh OUT_DIR [SPLIT ...]      (default splits: forget10 forget01)
#
# TOFU's files come from $LLM_EDIT_TOFU_DATA (or the hub); batch sizes and the device from
# $TOFU_FLAGS (default below). The fine-tuned model is shared by the splits (same rows).
set -u -o pipefail
out=${1:?usage: evals/tofu_full.sh OUT_DIR [SPLIT ...]}
shift
splits=${*:-forget10 forget01}
flags=${TOFU_FLAGS:---device cuda --batch-size 256 --generation-batch-size 512}
status=0
for split in $splits; do
    echo "== $split ($(date -u +%H:%M:%S))"
    # shellcheck disable=SC2086
    python3 -m llm_edit tofu --model llama --split "$split" --method grad_diff,npo,simnpo $flags \
        --out "$out/$split" --overwrite || status=$?
done
exit $status
