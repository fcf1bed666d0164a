#!/usr/bin/env bash
# Syntax and type check of the macOS-only ANE sources on Linux (no Mac in CI).
#
# Every native/**/*.mm file is checked with clang -fsyntax-only as Objective-C++ against
# GNUstep's Foundation headers plus our declaration-only Apple headers in
# native/backend/ane/linux_check/. The Apple-only C++ (ane_backend.cpp) is checked too.
# Installs clang and libgnustep-base-dev with apt when missing. Exits non-zero on any error.
# ARC is not checkable here (Debian's GCC libobjc headers reject -fobjc-arc), so the check is
# MRC; the .mm files are written ARC/MRC-neutral.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v clang++ >/dev/null 2>&1 || need_apt+=(clang)
[ -d /usr/include/GNUstep/Foundation ] || need_apt+=(libgnustep-base-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "objc_check: installing ${need_apt[*]}"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

GCC_INCLUDE="$(gcc -print-file-name=include)"
SHIMS=native/backend/ane/linux_check
COMMON=(-fsyntax-only -std=c++17 -Werror -Wall -Wno-unused-function
        -DGNUSTEP -DGNUSTEP_BASE_LIBRARY=1 -DGNU_RUNTIME=1
        -I"$SHIMS" -Inative -I/usr/include/GNUstep -I"$GCC_INCLUDE")

status=0
mapfile -t mm_files < <(find native -name '*.mm' | sort)
if [ ${#mm_files[@]} -eq 0 ]; then
    echo "objc_check: no .mm files found under native/" >&2
    exit 1
fi
for f in "${mm_files[@]}"; do
    if clang++ -x objective-c++ -fobjc-runtime=gnustep-2.0 -fobjc-exceptions -fexceptions \
        -fconstant-string-class=NSConstantString -include "$SHIMS/apple_runtime.h" \
        "${COMMON[@]}" "$f"; then
        echo "objc_check: ok   $f"
    else
        echo "objc_check: FAIL $f" >&2
        status=1
    fi
done
# The Apple-only C++ (the ANE Backend subclass and the bindings' ANE program handle).
PY_INCLUDES=($(python3 -m pybind11 --includes))
BLAS_INCLUDE="$(python3 -c 'import scipy_openblas32 as s; print(s.get_include_dir())')"
PY_INCLUDES+=(-DANETRAIN_SCIPY_OPENBLAS -DBLAS_SYMBOL_PREFIX=scipy_ -I"$BLAS_INCLUDE")
for f in native/backend/ane/ane_backend.cpp native/bindings.cpp; do
    if clang++ -x c++ -DANETRAIN_ANE_SYNTAX_CHECK "${COMMON[@]}" -Wno-unused-command-line-argument "${PY_INCLUDES[@]}" "$f"; then
        echo "objc_check: ok   $f"
    else
        echo "objc_check: FAIL $f" >&2
        status=1
    fi
done
exit $status
