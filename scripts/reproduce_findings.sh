#!/usr/bin/env bash
# Reruns every sweep and report behind docs/findings.md, on the real MNIST and Fashion-MNIST,
# and on CIFAR-10 from the folder CIFAR10_ROOT names (the one holding cifar-10-batches-py).
#
#   VAE_BENCH_DATA=../shared/data bash scripts/reproduce_findings.sh
#   VAE_BENCH_DATA=../shared/data CIFAR10_ROOT=~/data/cifar10 STUDIES=cifar_encoder \
#       bash scripts/reproduce_findings.sh
#
# CIFAR10_ROOT defaults to $VAE_BENCH_DATA/CIFAR10-JPEG, the JPEG re-encoding in this project's
# shared data: results on it are "CIFAR-10 (JPEG re-encoding)" (the runs' summaries and the
# reports say which copy they read) and its bits/dim are not comparable with published CIFAR-10
# figures. With the original files the same commands give numbers that are: where
# CIFAR10_ROOT holds no CIFAR-10, the script downloads the original there first (where there is
# internet). Keep those runs and reports apart from the JPEG re-encoding's: give them other
# FINDINGS_RUNS and FINDINGS_DOCS folders (a run recorded on other data is never taken for
# one of them: the sweep refuses it and says why).
#
# Each sweep writes into a fixed folder under $FINDINGS_RUNS (default outputs/findings), so
# running the script again after it was cut short finishes only what is missing: completed and
# diverged jobs are skipped, interrupted or killed ones resume. Each finished run is also
# recorded, as it lands, in docs/findings/<study>/runs (scripts/study_records.py: no
# checkpoints, events cut to what the report reads), and a sweep starts by restoring those
# records: on a fresh machine, or after outputs/ was deleted, the same command skips the runs
# already recorded; commit the records to keep them. The reports (tables, JSON, CSV,
# figures) go to docs/findings/<study>/. On a 2-core CPU the studies before long_horizon take
# about 2 hours with the default 2 jobs of 1 thread each, and long_horizon alone about 6 hours
# on idle cores (its preset's header has the budget); JOBS=N runs N jobs at a time (give each a
# core), STUDIES="…" picks studies. SWEEPS_ONLY=1 sweeps and leaves the reports for later;
# REPORTS_ONLY=1 trains nothing: it restores the recorded runs and redraws the reports from them
# (after a change to `vae-bench report`, say), in minutes.
#
# Every budget is here and nowhere else: seeds, epochs, IWAE k.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${VAE_BENCH_DATA:?point VAE_BENCH_DATA at the folder holding MNIST/raw and FashionMNIST/raw}"
export VAE_BENCH_DATA
RUNS=${FINDINGS_RUNS:-outputs/findings}
DOCS=${FINDINGS_DOCS:-docs/findings}
RECORDS=${FINDINGS_RECORDS:-$DOCS}  # <study>/runs: each finished run's record (study_records.py)
RECORD_EVERY=${RECORD_EVERY:-300}   # seconds between records of runs finished mid-sweep
JOBS=${JOBS:-2}
if [ "${SWEEPS_ONLY:-0}" = 1 ] && [ "${REPORTS_ONLY:-0}" = 1 ]; then
  echo "reproduce_findings.sh: SWEEPS_ONLY=1 and REPORTS_ONLY=1 leave nothing to do; set one" >&2
  exit 2
fi
VAE_BENCH=${VAE_BENCH:-vae-bench}   # e.g. VAE_BENCH="python -m vae_bench"
STUDIES=${STUDIES:-"param_sweep_mnist lr_stability param_sweep_fashion_mnist logstd_equivalence same_init_sigma decoder_variance decoder_variance_bounded cifar_encoder cifar_decoder long_horizon"}
CIFAR10_ROOT=${CIFAR10_ROOT:-$VAE_BENCH_DATA/CIFAR10-JPEG}

# One thread per job: the jobs share the cores instead of fighting over them.
PARALLEL=(hydra/launcher=joblib "hydra.launcher.n_jobs=$JOBS" trainer.threads=1 log.quiet=true)
SEEDS5=seed=0,1,2,3,4
SEEDS3=seed=0,1,2

records() {  # records <study> save|restore: the study's finished runs, kept in git
  local runs="$RUNS/$1" kept="$RECORDS/$1/runs"
  if [ "$2" = save ]; then
    python scripts/study_records.py save "$runs" "$kept"
  else
    python scripts/study_records.py restore "$kept" "$runs"
  fi
}

record_while_sweeping() {  # record_while_sweeping <study>: every RECORD_EVERY s, until killed
  local sleeper
  trap 'kill "$sleeper" 2> /dev/null; exit 0' TERM  # a save under way finishes first
  while true; do
    sleep "$RECORD_EVERY" &
    sleeper=$!
    wait "$sleeper"
    records "$1" save > /dev/null || true
  done
}

sweep() {  # sweep <study> <overrides...>: one study into its fixed folder
  local study=$1 status=0 saver
  shift
  records "$study" restore
  [ "${REPORTS_ONLY:-0}" = 1 ] && return 0
  # Finished runs are recorded as they land, not only at the end: a session that ends
  # mid-sweep keeps them (commit $RECORDS/<study>/runs).
  record_while_sweeping "$study" &
  saver=$!
  echo "== sweep $study: $*"
  $VAE_BENCH train -m "experiment=$study" "$@" "${PARALLEL[@]}" "hydra.sweep.dir=$RUNS/$study" \
    || status=$?
  kill "$saver" 2> /dev/null || true
  wait "$saver" 2> /dev/null || true  # before the last save starts
  records "$study" save
  return "$status"
}

report() {  # report <study> [report options...]; SWEEPS_ONLY=1 leaves reports for later
  report_into "$1" "$1" "${@:2}"
}

unreported() {  # unreported <study>: true (and says so) when REPORTS_ONLY finds no runs of it
  [ "${REPORTS_ONLY:-0}" = 1 ] && [ ! -d "$RUNS/$1" ] || return 1
  echo "== $1: no runs in $RUNS/$1 and no records in $RECORDS/$1/runs to restore; its report" \
    "needs them: run it without REPORTS_ONLY"
}

report_into() {  # report_into <study> <folder under $DOCS> [report options...]
  local study=$1 out=$2
  shift 2
  [ "${SWEEPS_ONLY:-0}" = 1 ] && return 0
  unreported "$study" && return 0
  echo "== report $study into $DOCS/$out"
  $VAE_BENCH report "$RUNS/$study" --out "$DOCS/$out" "$@"
}

cifar10_files() {  # cifar10_files <study>: CIFAR-10 under $CIFAR10_ROOT, the original fetched
  # once where none is there (the jobs of a sweep would each try); a copy there is read as it is
  [ "${REPORTS_ONLY:-0}" = 1 ] && return 0  # no training: the records say which copy was read
  python - "$CIFAR10_ROOT" "$1" <<'PYTHON'
import sys

from vae_bench.data import DataError, ensure_files

root, study = sys.argv[1:]
try:
    ensure_files("cifar10", root, download=True)
except DataError as error:
    sys.exit(f"reproduce_findings.sh: {study}: CIFAR10_ROOT={root}: {error} Or leave the "
             "CIFAR-10 studies out with STUDIES=...")
PYTHON
}

sigma_maps() {  # sigma_maps <study>: decoder σₓ per pixel, from each run's last checkpoint
  [ "${SWEEPS_ONLY:-0}" = 1 ] && return 0
  unreported "$1" > /dev/null && return 0  # report_into said why
  python scripts/decoder_sigma_maps.py "$RUNS/$1" --out "$DOCS/$1"
  records "$1" save  # each run's row, kept beside it, joins its record (checkpoints do not)
}

for study in $STUDIES; do
  case $study in
    # Headline: every encoder σ-map, 5 seeds, 10 epochs, Adam lr 1e-3, IWAE k=100.
    param_sweep_mnist | param_sweep_fashion_mnist)
      sweep "$study" "$SEEDS5" trainer.epochs=10 eval.iwae_k=100
      report "$study" ;;
    # Stability frontier: every σ-map under SGD and Adam over a quarter-decade lr grid,
    # 3 seeds, 1 epoch (the preset's budget: divergence shows early).
    lr_stability)
      sweep "$study"
      report "$study" ;;
    # log σ vs log σ²: logvar, plain logstd, matched logstd, under SGD and Adam, 3 seeds, 10 epochs.
    logstd_equivalence)
      sweep "$study" "$SEEDS3" trainer.epochs=10 eval.iwae_k=100
      report "$study" ;;
    # Initialization ruled out: logvar and natural both start at σ = 1, 5 seeds, 10 epochs.
    same_init_sigma)
      sweep "$study" param=logvar,natural "$SEEDS5" trainer.epochs=10 eval.iwae_k=100
      report "$study" ;;
    # Decoder σₓ: per-pixel σₓ through each σ-map, shared σₓ, fixed σₓ; 3 seeds, 5 epochs
    # (σₓ collapses on the background within the first epochs).
    decoder_variance)
      sweep "$study" "$SEEDS3" trainer.epochs=5 eval.iwae_k=100
      report "$study" --group-by dataset,model --baseline variant=decoder_variance_pixel_logvar
      sigma_maps "$study" ;;
    # Decoder σₓ with a bounded likelihood (a discretized Gaussian: a probability per 8-bit
    # value), MNIST and Fashion-MNIST, 3 seeds, 10 epochs, IWAE k=100.
    decoder_variance_bounded)
      sweep "$study" trainer.epochs=10 eval.iwae_k=100
      report "$study" --baseline variant=decoder_bounded_pixel_logvar
      # The per-pixel logvar decoder may diverge in every seed: the maps that complete are
      # compared with each other against soft_clamped_logvar, logvar with its range bounded.
      report_into "$study" "$study/vs_soft_clamped_logvar" --no-figures \
        --baseline variant=decoder_bounded_pixel_soft_clamped_logvar
      sigma_maps "$study" ;;
    # Natural images: the conv VAE on CIFAR-10 with a discretized Gaussian, 3 seeds, 10 epochs,
    # IWAE k=100 on the first 2,000 test images (the ELBO uses all 10,000). Encoder σ-maps with
    # a shared learned σₓ; decoder σₓ maps with the encoder on logvar. Learned σₓ start at 0.25.
    cifar_encoder | cifar_decoder)
      cifar10_files "$study" || exit 2
      sweep "$study" "data.root=$CIFAR10_ROOT" trainer.epochs=10 eval.iwae_k=100 \
        eval.iwae_max_examples=2000
      if [ "$study" = cifar_decoder ]; then
        report "$study" --baseline variant=cifar_decoder_pixel_logvar
        sigma_maps "$study"
      else
        report "$study"
      fi ;;
    # Long horizon: every σ-map on Burda et al.'s mlp_iwae and binarized MNIST, 300 epochs with
    # the burda lr schedule, IWAE k=100 at epochs 10, 30, 100, 300; final IWAE k=5000 for seed 0
    # and k=1000 for seeds 1, 2 (what fits: configs/experiment/long_horizon.yaml).
    long_horizon)
      sweep "$study" "seed=range(0,1)"
      sweep "$study" seed=1,2 eval.iwae_k_final=1000
      report "$study" ;;
    *)
      echo "unknown study $study" >&2
      exit 2 ;;
  esac
done
echo "== done: runs in $RUNS, reports in $DOCS"
