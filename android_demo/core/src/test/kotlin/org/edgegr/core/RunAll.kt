package org.edgegr.core

import org.junit.runner.Description
import org.junit.runner.JUnitCore
import org.junit.runner.notification.Failure
import org.junit.runner.notification.RunListener
import java.io.File
import java.util.zip.ZipFile
import kotlin.system.exitProcess

/**
 * Runs every `*Test` class of this package (found in the jar or folder this class came from)
 * with JUnit 4, prints one line per failure and closes with "N passed, N failed[, N skipped]".
 * Exit status 1 if anything failed or nothing ran.
 */
fun main(args: Array<String>) {
    val names = if (args.isNotEmpty()) args.toList() else discover()
    val classes = names.map { Class.forName(it) }
    val core = JUnitCore()
    var failedNow = false
    core.addListener(object : RunListener() {
        override fun testFailure(failure: Failure) {
            failedNow = true
            val trace = failure.trace.lines().filter { it.contains("org.edgegr") || !it.startsWith("\tat ") }.take(8)
            println("FAIL ${failure.description.displayName}\n  " + trace.joinToString("\n  "))
        }
        override fun testStarted(description: Description) { failedNow = false }
        override fun testFinished(description: Description) { if (!failedNow) println("ok   ${description.displayName}") }
    })
    val r = core.run(*classes.toTypedArray())
    val failed = r.failureCount
    val skipped = r.ignoreCount + r.assumptionFailureCount
    val passed = r.runCount - failed - r.assumptionFailureCount
    println("$passed passed, $failed failed" + if (skipped > 0) ", $skipped skipped" else "")
    exitProcess(if (failed == 0 && passed > 0) 0 else 1)
}

private fun discover(): List<String> {
    val where = File(RunListenerAnchor::class.java.protectionDomain.codeSource.location.toURI())
    val pkg = "org/edgegr/core/"
    val entries = if (where.isDirectory) {
        where.walk().filter { it.isFile }.map { it.relativeTo(where).path.replace(File.separatorChar, '/') }.toList()
    } else {
        ZipFile(where).use { z -> z.entries().toList().map { it.name } }
    }
    return entries.filter { it.startsWith(pkg) && it.endsWith("Test.class") && !it.contains('$') }
        .map { it.removeSuffix(".class").replace('/', '.') }.sorted()
}

private class RunListenerAnchor
