# Parses the output of one `./runtest --single UNIT` of Redis's test suite (test_helper.tcl's
# test server) into records for scripts/conformance, one a line, tab-separated:
#
#   ok        NAME
#   err       NAME  MESSAGE        the [err] line's following lines (the assertion's expected and
#                                  actual text), up to 12 lines, joined with "\n"
#   skip      NAME                 --skiptest / --only
#   ignore    NAME                 a tag excluded it (external:skip, --tags -x, singledb:skip)
#   exception -     MESSAGE        the unit was aborted: a Tcl error that is not an assertion (an
#                                  error reply the test did not expect, a closed connection), and
#                                  the test's command that raised it
#   timeout   NAME  MESSAGE        no progress for --timeout seconds; NAME was in progress (or
#                                  "-" when the hang came between tests)
#   done      UNIT  SECONDS        the unit ran to its end
#
# Names and messages have tabs replaced by spaces; colours (when TERM matches *xterm*) are
# stripped. Usage: awk -f conformance-parse.awk runtest.log
function flush() {
    if (kind != "") {
        gsub(/\t/, " ", msg)
        print kind "\t" name "\t" msg
    }
    kind = ""; name = ""; msg = ""; lines = 0
}
function clean(s) { gsub(/\t/, " ", s); return s }
{ gsub(/\033\[[0-9;]*m/, ""); sub(/\r$/, "") }

/^\[ok\]: / {
    flush()
    n = substr($0, 7)
    sub(/ \([0-9]+ ms\)$/, "", n)
    print "ok\t" clean(n) "\t"
    next
}
/^\[err\]: / {
    flush()
    # "[err]: NAME in tests/unit/x.tcl", then the details, one or more lines.
    n = substr($0, 8)
    sub(/ in tests\/[^ ]*\.tcl$/, "", n)
    kind = "err"; name = clean(n)
    next
}
/^\[skip\]: / { flush(); print "skip\t" clean(substr($0, 9)) "\t"; next }
/^\[ignore\]: / { flush(); print "ignore\t" clean(substr($0, 11)) "\t"; next }
/^\[exception\]: / {
    flush()
    # "[exception]: Executing test client: ERROR.", then Tcl's errorInfo: kept as the error and
    # the first command of the test's own that raised it ("r set key val"), not the helpers
    # it went through.
    kind = "exception"; name = "-"; msg = substr($0, 14); lines = 1; at = ""
    sub(/^Executing test client: /, "", msg); sub(/\.$/, "", msg)
    next
}
kind == "exception" {
    if (at == "" && /^"/ && !/^"(\[srv |srv |dict get |uplevel |error |assert_|wait_for_condition|test )/) {
        at = $0; sub(/^"/, "", at); sub(/"$/, "", at)
        if (length(at) > 120) at = substr(at, 1, 120) " …"
        msg = msg " (in: " at ")"
    }
    next
}
/^\[TIMEOUT\]: / { flush(); kind = "timeout"; name = "-"; msg = "-"; next }
kind == "timeout" && / => \((IN PROGRESS|OK|ERR|SPAWNING SERVER|KILLING SERVER)\) / {
    # The test server's view of its client: the test in progress, or the last one that ended.
    n = $0
    sub(/^[^=]* => /, "", n)
    if (n ~ /^\(IN PROGRESS\) /) {
        sub(/^\(IN PROGRESS\) /, "", n)
        name = clean(n); msg = "no progress for --timeout seconds in this test"
    } else {
        name = "-"; msg = clean("no progress for --timeout seconds after " n)
    }
    next
}
/^\[[0-9]+\/[0-9]+ done\]: / {
    flush()
    n = $0
    sub(/^\[[0-9]+\/[0-9]+ done\]: /, "", n)
    secs = n
    sub(/ \([0-9]+ seconds\)$/, "", n)
    sub(/^.* \(/, "", secs); sub(/ seconds\)$/, "", secs)
    print "done\t" n "\t" secs
    next
}
# The test server's own lines, which end a multi-line message.
/^Testing |^ *The End$|^Execution time of different units:|^  [0-9]+ seconds - |^!!! WARNING|^\*\*\* |^Cleanup: |^\[ready\]: |^Starting test server|^Killing still running Redis server|^\\o\/ All tests passed/ {
    flush()
    next
}
kind == "err" {
    if (lines < 12) msg = msg (msg == "" ? "" : "\\n") $0
    lines++
    next
}
END { flush() }
