#!/bin/bash
# Second one-off sweep: six GPU jobs side by side to see where configs plateau (quality
# ceiling per epoch, not CPU speed); see quality-notes.md.
set -u
OUT=${OUT:-/tmp/sweep}; mkdir -p "$OUT"
PY=${PY:-python3}; DATA=${DATA:-../shared/datasets/Beauty.txt}; S=benchmarks/results/sweep.py
C='"encoder":"caser","window":8,"max_len":50,"dim":64'
G='"max_seconds":200,"threads":2,"patience":6,"device":"cuda"'
job() { OMP_NUM_THREADS=2 $PY $S "$OUT/$1.json" "$2" "$3" "$4" "$DATA" > "$OUT/$1.log" 2>&1 & }
job h1_cnn_caser_lr1    cnn     "{$C}" "{$G}"
job h2_cnn_caser_lr3    cnn     "{$C}" "{$G,\"lr\":0.003}"
job h3_dnn_caser_lr3    cnn_dnn "{$C}" "{$G,\"lr\":0.003}"
job h4_dnn_caser_lr3_s8k cnn_dnn "{$C}" "{$G,\"lr\":0.003,\"sampled_softmax_above\":0,\"n_negatives\":8192}"
job h5_dnn_dil_lr3      cnn_dnn "{\"encoder\":\"dilated\",\"dim\":64}" "{$G,\"lr\":0.003}"
job h6_dnn_caser_lr3_do5 cnn_dnn "{$C,\"dropout\":0.5,\"emb_dropout\":0.5}" "{$G,\"lr\":0.003}"
wait
