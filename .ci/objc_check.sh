#!/usr/bin/env bash
# Syntax and type check of the macOS-only ANE sources on Linux (no Mac in CI).
#
# Every native/**/*.mm file is checked with clang -fsyntax-only as Objective-C++ against
# GNUstep's Foundation headers plus our declaration-only Apple headers in
# native/backend/ane/linux_check/. The Apple-only C++ (ane_backend.cpp, the ANE kernel probes of
# native/bindings/ane.cpp, found by its guard) is checked too.
# Installs clang and libgnustep-base-dev with apt when missing (--install-only: only that).
# Exits non-zero on any error.
# The .mm files are checked twice, without ARC and with ARC (the real build uses ARC).
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

[ "${1:-}" = "--install-only" ] && exit 0

GCC_INCLUDE="$(gcc -print-file-name=include)"
SHIMS=native/backend/ane/linux_check
COMMON=(-fsyntax-only -std=c++17 -Werror -Wall -Wno-unused-function
        -DGNUSTEP -DGNUSTEP_BASE_LIBRARY=1 -DGNU_RUNTIME=1
        -I"$SHIMS" -Inative -I/usr/include/GNUstep -I"$GCC_INCLUDE")

# ARC pass: GCC's libobjc headers are not ARC-clean in four places (the body of the inline
# object_getClass dereferences id; three prototypes return Protocol**). Check against a copy
# with those made ARC-clean: no signature our code is checked against changes.
ARC_HEADERS="$(mktemp -d)"
trap 'rm -rf "$ARC_HEADERS"' EXIT
cp -r "$GCC_INCLUDE/objc" "$ARC_HEADERS/objc"
sed -i -e 's/Protocol \*\*/Protocol * __unsafe_unretained */g' \
       -e 's/return object->class_pointer;/return Nil;/' "$ARC_HEADERS/objc/runtime.h"

status=0
mapfile -t mm_files < <(find native -name '*.mm' | sort)
if [ ${#mm_files[@]} -eq 0 ]; then
    echo "objc_check: no .mm files found under native/" >&2
    exit 1
fi
OBJC=(-x objective-c++ -fobjc-runtime=gnustep-2.0 -fobjc-exceptions -fexceptions
      -fconstant-string-class=NSConstantString -include "$SHIMS/apple_runtime.h")
for f in "${mm_files[@]}"; do
    for mode in mrc arc; do
        if [ $mode = arc ]; then
            flags=(-fobjc-arc -I"$ARC_HEADERS")
        else
            flags=()
        fi
        if clang++ "${OBJC[@]}" "${flags[@]}" "${COMMON[@]}" "$f"; then
            echo "objc_check: ok   $f ($mode)"
        else
            echo "objc_check: FAIL $f ($mode)" >&2
            status=1
        fi
    done
done
# The Apple-only C++: the ANE Backend subclass and every bindings file with an Apple-only block
# (found by its guard, so a block moved to another file stays checked; the rest build on Linux anyway).
python3 -c "import pybind11" 2>/dev/null || python3 -m pip install -q pybind11  # a build-time-only dependency
PY_INCLUDES=($(python3 -m pybind11 --includes))
BLAS_INCLUDE="$(python3 -c 'import scipy_openblas32 as s; print(s.get_include_dir())')"
PY_INCLUDES+=(-DANETRAIN_SCIPY_OPENBLAS -DBLAS_SYMBOL_PREFIX=scipy_ -I"$BLAS_INCLUDE")
mapfile -t binding_files < <(grep -l ANETRAIN_ANE_SYNTAX_CHECK native/bindings/*.cpp | sort)
for f in native/backend/ane/ane_backend.cpp "${binding_files[@]}"; do
    if clang++ -x c++ -DANETRAIN_ANE_SYNTAX_CHECK "${COMMON[@]}" -Wno-unused-command-line-argument "${PY_INCLUDES[@]}" "$f"; then
        echo "objc_check: ok   $f"
    else
        echo "objc_check: FAIL $f" >&2
        status=1
    fi
done
exit $status
