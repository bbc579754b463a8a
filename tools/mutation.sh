#!/usr/bin/env bash
# Mutation testing of the modules that carry the rules (docs/testing.md).
#
#   tools/mutation.sh                 every module below, then the table
#   tools/mutation.sh metrics loss    only these modules, then the table
#   tools/mutation.sh --table         the table of the last run only
#
# Needs `pip install -e .[mutation]`. The mutants and their results live in
# mutants/ (ignored by git): an interrupted run goes on where it stopped, and
# mutants already decided are not run again. Changing the test selection in
# setup.cfg resets every result; delete mutants/ to start from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A PATTERNS=(
    [model]="fcn_graph.model.*"
    [metrics]="fcn_graph.metrics.*"
    [loss]="fcn_graph.train.x_segmentation_loss__mutmut_* fcn_graph.train.x_kernel_l2__mutmut_*"
    [checkpoint]="fcn_graph.checkpoint.*"
    [matconvnet]="fcn_graph.matconvnet.*"
    [datasets]="fcn_graph.datasets.x_read_label__mutmut_*"
)
ORDER=(loss metrics datasets checkpoint matconvnet model)  # the smallest first

if [[ "${1:-}" != "--table" ]]; then
    modules=("$@")
    [[ ${#modules[@]} -eq 0 ]] && modules=("${ORDER[@]}")
    for module in "${modules[@]}"; do
        if [[ -z "${PATTERNS[$module]:-}" ]]; then
            echo "tools/mutation.sh: unknown module '$module'; expected one of ${ORDER[*]}" >&2
            exit 2
        fi
    done
    for module in "${modules[@]}"; do
        read -r -a patterns <<< "${PATTERNS[$module]}"
        echo "== $module" >&2
        # TensorFlow's default kernels, so that a run is the same on every CPU.
        TF_ENABLE_ONEDNN_OPTS=0 nice -n 19 mutmut run "${patterns[@]}"
    done
fi
python tools/mutation_table.py
