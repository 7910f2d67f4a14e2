#!/usr/bin/env bash
# Type-check the app's Kotlin (app/src/main/kotlin) together with the core, here, without the
# Android SDK: against stubs/ - hand-written Java declarations of only the Android and ExecuTorch
# members the app uses, with the signatures of their published docs (Android API 35;
# org.pytorch.executorch Module/EValue/Tensor), plus the R class aapt would generate from res/.
# It catches errors in the app's Kotlin and drift between the app and the core; it is NOT an
# Android build (no aapt, no dex, no real SDK): see android_demo/README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
app="$(cd "$here/.." && pwd)"
core="$(cd "$app/../core" && pwd)"
out="$(mktemp -d "${TMPDIR:-/tmp}/edge-gr-typecheck.XXXXXX")"
trap 'rm -rf "$out"' EXIT
javac -nowarn -d "$out/stubs" $(find "$here/stubs" -name '*.java')
kotlinc -Werror -jvm-target 1.8 -cp "$out/stubs" -d "$out/app.jar" \
  $(find "$core/src/main/kotlin" "$app/src/main/kotlin" -name '*.kt') 2>&1 | grep -v -e noverify -e '^$' || true
[ -f "$out/app.jar" ] || { echo "app type-check failed" >&2; exit 1; }
echo "app sources type-check against the stubs: ok"
