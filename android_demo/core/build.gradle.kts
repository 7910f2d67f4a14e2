// The pure-Kotlin core: plain JVM library (no Android imports), used by :app. Its sources stay
// Kotlin-1.3-compatible so Debian's kotlin package can compile and test them offline
// (core/run_tests.sh); here Gradle builds them with the project's Kotlin.
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

// The JUnit tests read vectors that the Python runtime writes (never committed):
//   ./gradlew :core:test -Ppython=/path/to/edge-gr/.venv/bin/python
val vectorsDir = layout.buildDirectory.dir("vectors")
val writeVectors by tasks.registering(Exec::class) {
    val python = (findProperty("python") as String?) ?: "python3"
    workingDir = rootDir.parentFile   // the edge-gr repository root
    commandLine(python, "android_demo/make_vectors.py", "--out", vectorsDir.get().asFile.absolutePath)
}
tasks.test {
    dependsOn(writeVectors)
    systemProperty("edgegr.vectors", vectorsDir.get().asFile.absolutePath)
    exclude("**/RunAll*")
}
