#!/usr/bin/env bash
# Replaced by ablate.py (3 arms x 3 seeds, confidence intervals, paired differences; docs/EXPERIMENTS.md):
#   bash scripts/ablate_curriculum.sh [--seeds=5 ...]   ==   python ablate.py curriculum [--seeds=5 ...]
cd "$(dirname "$0")/.." && exec "${PYTHON:-python}" ablate.py curriculum "$@"
