#!/usr/bin/env bash
# Nothing needs building (pure Python, standard library only); byte-compile every module so that
# a syntax error fails here, loudly, instead of at the first connection.
set -eu
cd "$(dirname "$0")"
files=$(git ls-files '*.py' 2>/dev/null || true)
[ -n "$files" ] || files=$(find . -name '*.py' -not -path './.git/*')
echo "byte-compiling with $(python3 --version):" $files
# compile to a throw-away directory: the tree stays free of generated files
PYTHONPYCACHEPREFIX=$(mktemp -d) python3 -m py_compile $files
echo "compile.sh: ok"
