// edge-gr Android demo: `:core` is the pure-Kotlin core (no Android imports; also compiled and
// tested on the JVM by core/run_tests.sh with Kotlin 1.3), `:app` the thin Android layer.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "edge-gr-android-demo"
include(":core", ":app")
