#!/bin/bash
# One-off parallel sweep on a 16-core machine (see quality-notes.md):
# CPU jobs pinned to 2 threads each (the 2-core target) run side by side for a fixed
# wall-clock budget; GPU jobs run one after another to show where each config converges.
set -u
OUT=${OUT:-/tmp/sweep}; mkdir -p "$OUT"
PY=${PY:-python}
DATA=${DATA:-../shared/datasets/Beauty.txt}
S=benchmarks/results/sweep.py
nvidia-smi -L 2>/dev/null; nproc
D='"encoder":"dilated","max_len":50'
cpu() { # name model netcfg traincfg
  OMP_NUM_THREADS=2 $PY $S "$OUT/$1.json" "$2" "$3" "$4" "$DATA" > "$OUT/$1.log" 2>&1 &
}
T='"max_seconds":370,"val_max_users":10000,"threads":2,"patience":4'
cpu c1_dnn_full      cnn_dnn "{\"dim\":64,$D}" "{$T}"
cpu c2_dnn_full_b256 cnn_dnn "{\"dim\":64,$D}" "{$T,\"batch_size\":256,\"lr\":0.002}"
cpu c3_dnn_samp8k    cnn_dnn "{\"dim\":64,$D}" "{$T,\"sampled_softmax_above\":0,\"n_negatives\":8192}"
cpu c4_dnn_caser     cnn_dnn "{\"dim\":64,\"encoder\":\"caser\",\"window\":8}" "{$T}"
cpu c5_cnn_full      cnn     "{\"dim\":64,$D}" "{$T}"
cpu c6_dnn_do5       cnn_dnn "{\"dim\":64,$D,\"dropout\":0.5,\"emb_dropout\":0.5}" "{$T}"
G='"max_seconds":40,"threads":2,"patience":4,"device":"cuda"'
gpu() { OMP_NUM_THREADS=2 $PY $S "$OUT/$1.json" "$2" "$3" "$4" "$DATA" > "$OUT/$1.log" 2>&1; }
gpu g1_dnn        cnn_dnn "{\"dim\":64,$D}" "{$G}"
gpu g2_dnn_do5    cnn_dnn "{\"dim\":64,$D,\"dropout\":0.5,\"emb_dropout\":0.5}" "{$G}"
gpu g3_dnn_d128   cnn_dnn "{\"dim\":128,$D,\"dropout\":0.5,\"emb_dropout\":0.5}" "{$G}"
gpu g4_cnn        cnn     "{\"dim\":64,$D}" "{$G}"
gpu g5_dnn_caser  cnn_dnn "{\"dim\":64,\"encoder\":\"caser\",\"window\":8}" "{$G}"
gpu g6_cnn_caser  cnn     "{\"dim\":64,\"encoder\":\"caser\",\"window\":8}" "{$G}"
gpu g7_dnn_b256   cnn_dnn "{\"dim\":64,$D}" "{$G,\"batch_size\":256,\"lr\":0.002}"
gpu g8_dnn_edo5   cnn_dnn "{\"dim\":64,$D,\"dropout\":0.2,\"emb_dropout\":0.5}" "{$G}"
wait
grep -h DONE "$OUT"/*.log
