#!/usr/bin/env bash
# JVM tests of the pure-Kotlin core against vectors that the Python runtime writes now.
#
#   android_demo/core/run_tests.sh            # from anywhere; closes with "N passed, N failed"
#
# Needs Debian's `kotlin` (1.3) and `junit4` packages (`apt-get install -y kotlin junit4`) and the
# project's Python (PYTHON, default: .venv/bin/python of the repo, else python3). Compiles the
# core and its tests once into android_demo/core/build/ (reused while no source changed), writes
# the vectors into a temporary folder (EDGE_GR_VECTORS=DIR keeps them there instead), runs JUnit.
# EDGE_GR_REAL_VECTORS=1 adds vectors from a tiny model trained and exported with ExecuTorch
# here (make_vectors.py --real: 1-2 min more on 2 cores; needs torch + executorch).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
JAVA_LIBS=/usr/share/java
KOTLIN_STDLIB="$JAVA_LIBS/kotlin-stdlib.jar"
JUNIT="$JAVA_LIBS/junit4.jar:$JAVA_LIBS/hamcrest-core.jar"
for need in kotlinc java; do
  command -v "$need" >/dev/null || { echo "$need not found: apt-get install -y kotlin junit4" >&2; exit 2; }
done
[ -f "$JAVA_LIBS/junit4.jar" ] || { echo "$JAVA_LIBS/junit4.jar not found: apt-get install -y junit4" >&2; exit 2; }
[ -f "$KOTLIN_STDLIB" ] || KOTLIN_STDLIB="$(ls "$JAVA_LIBS"/kotlin-stdlib-1.*.jar | grep -v -e common -e jdk | head -1)"

# 1. vectors from the Python runtime (never committed: they cannot drift from it)
if [ -n "${EDGE_GR_VECTORS:-}" ]; then
  vectors="$EDGE_GR_VECTORS"
else
  vectors="$(mktemp -d "${TMPDIR:-/tmp}/edge-gr-vectors.XXXXXX")"
  trap 'rm -rf "$vectors"' EXIT
fi
real=()
[ "${EDGE_GR_REAL_VECTORS:-0}" = 1 ] && real=(--real)
(cd "$repo" && "$PYTHON" android_demo/make_vectors.py --out "$vectors" "${real[@]}")

# 2. compile (kotlinc is slow on small machines: skip when the jar is newer than every source)
build="$here/build"
jar="$build/core-tests.jar"
mkdir -p "$build"
sources=$(find "$here/src/main/kotlin" "$here/src/test/kotlin" -name '*.kt' | sort)
stamp="$(cat $sources | sha256sum | cut -c1-16)-$(kotlinc -version 2>&1 | grep -o 'kotlinc-jvm [^ ]*' || true)"
if [ ! -f "$jar" ] || [ "$(cat "$build/stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "compiling the Kotlin core and its tests ..."
  rm -f "$jar" "$build/stamp"
  # -Werror: the core must stay warning-free (so it also builds with the Android app's newer Kotlin)
  kotlinc -Werror -jvm-target 1.8 -cp "$JUNIT" -d "$jar" $sources 2>&1 | grep -v -e 'noverify' -e '^$' || true
  [ -f "$jar" ] || { echo "compilation failed" >&2; exit 1; }
  echo "$stamp" > "$build/stamp"
fi

# 3. run
java -cp "$jar:$KOTLIN_STDLIB:$JUNIT" -Dedgegr.vectors="$vectors" org.edgegr.core.RunAllKt
