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
# setup.cfg resets every result; after changing the code or the tests, delete
# mutants/ to measure from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

# The modules and the mutants of each are listed in tools/mutation_table.py.
declare -A PATTERNS=([model]=1 [tf_layers]=1 [metrics]=1 [loss]=1 [checkpoint]=1 [matconvnet]=1 [datasets]=1)
ORDER=(loss metrics datasets checkpoint matconvnet model tf_layers)  # the smallest first

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
        # the module's mutants not decided yet (all of them on its first run)
        mapfile -t names < <(python tools/mutation_table.py --pending "$module")
        if [[ ${#names[@]} -eq 0 ]]; then
            echo "== $module: every mutant decided (delete mutants/ to run it again)" >&2
            continue
        fi
        echo "== $module: ${#names[@]} to run" >&2
        # TensorFlow's default kernels, so that a run is the same on every CPU.
        TF_ENABLE_ONEDNN_OPTS=0 nice -n 19 mutmut run "${names[@]}"
    done
fi
python tools/mutation_table.py
