# The Markdown report of scripts/conformance. Input (tab-separated), in run order then unit
# order: "RUN UNIT KIND NAME MESSAGE" per test (conformance-parse.awk's records), and per unit
# "RUN UNIT unit STATUS SECONDS IN_TEST WHY SHARED_REQUESTS OWN_SESSIONS".
# Variables: spec (lines "RUN<TAB>BASELINE<TAB>SECONDS<TAB>DESCRIPTION", BASELINE "-" for a
# direct run), allowfile (the allowlist), gatefile (receives the number of tunnel-only failures
# the allowlist does not cover), title.
#
# A test fails "through the tunnel only" when it passed in the baseline run and failed (or was
# the test a unit was aborted in) in the tunnel run; names are compared as multisets per unit,
# since a few units repeat a name. Tests that passed in the baseline and are absent from the
# tunnel run "never ran" there (their unit ended early).

function md(s, max) {
    if (max && length(s) > max) s = substr(s, 1, max) " …"
    gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s)
    gsub(/\|/, "\\|", s)
    gsub(/\\n/, "<br>", s)
    return s
}
function dur(s) { return s >= 60 ? sprintf("%dm %02ds", s / 60, s % 60) : s "s" }
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
function allowed(unit, name,    k) {
    if ((unit SUBSEP name) in allow) return allow[unit, name]
    if (("*" SUBSEP name) in allow) return allow["*", name]
    return ""
}
function add_failure(unit, name, run, msg,    k) {
    k = unit SUBSEP name
    if (!(k in fail_runs)) { nfail++; fail_key[nfail] = k; fail_unit[nfail] = unit; fail_name[nfail] = name; fail_msg[k] = msg; fail_runs[k] = run }
    else fail_runs[k] = fail_runs[k] ", " run
    tunnel_only[run]++
}

BEGIN {
    nruns = split(spec, lines, "\n")
    n = 0
    for (i = 1; i <= nruns; i++) {
        if (lines[i] == "") continue
        split(lines[i], f, "\t")
        n++; runs[n] = f[1]; base[f[1]] = f[2]; secs[f[1]] = f[3]; desc[f[1]] = f[4]
    }
    nruns = n
    # The allowlist: "UNIT: TEST NAME # reason" or "TEST NAME # reason" (any unit).
    if (allowfile != "") {
        while ((getline line < allowfile) > 0) {
            if (line ~ /^[ \t]*(#|$)/) continue
            reason = "listed"
            p = index(line, " # ")
            if (p) { reason = trim(substr(line, p + 3)); line = substr(line, 1, p - 1) }
            line = trim(line)
            unit = "*"
            if (match(line, /^(unit|integration)\/[^ :]+: /)) {
                unit = substr(line, 1, RLENGTH - 2); line = substr(line, RLENGTH + 1)
            }
            allow[unit, line] = reason
        }
        close(allowfile)
    }
}

{
    run = $1; unit = $2; kind = $3
    if (!(unit in unit_seen)) { unit_seen[unit] = 1; units[++nunits] = unit }
    if (kind == "unit") {
        status[run, unit] = $4; usecs[run, unit] = $5; in_test[run, unit] = $6; why[run, unit] = $7
        shared_req[run] += $8; own_sess[run] += $9; has_metrics[run] = has_metrics[run] || ($8 != "")
        attempts[run, unit] = $10
        ran[run, unit] = ($4 != "not-run")
        # Ended early in a test, without a further attempt: an abort like the resumed ones.
        if ($4 != "done" && $4 != "not-run" && $6 != "-" && $6 != "") {
            naborts[run, unit]++; ab_name[run, unit, naborts[run, unit]] = $6; ab_msg[run, unit, naborts[run, unit]] = $4 ": " $7
            aborts[run, unit, $6]++; abort_why[run, unit, $6] = $4 ": " $7
        }
        next
    }
    if (kind == "abort") {
        naborts[run, unit]++; ab_name[run, unit, naborts[run, unit]] = $4; ab_msg[run, unit, naborts[run, unit]] = $5
        aborts[run, unit, $4]++; abort_why[run, unit, $4] = $5
        if (!((unit, $4) in name_seen)) { name_seen[unit, $4] = 1; nnames[unit]++; names[unit, nnames[unit]] = $4 }
        next
    }
    name = $4
    if (kind == "ok" || kind == "err") {
        if (!((unit, name) in name_seen)) { name_seen[unit, name] = 1; nnames[unit]++; names[unit, nnames[unit]] = name }
    }
    if (kind == "ignore" || kind == "skip") { skipped[run]++; skipunit[run, unit]++; next }
    if (kind == "ok") { ok[run, unit, name]++; passed[run]++; okunit[run, unit]++ }
    else if (kind == "err") {
        err[run, unit, name]++; failed[run]++; errunit[run, unit]++
        if (!((run, unit, name) in errmsg)) errmsg[run, unit, name] = $5
    }
}

END {
    # Compare every tunnel run with its baseline.
    for (i = 1; i <= nruns; i++) {
        r = runs[i]; b = base[r]
        for (j = 1; j <= nunits; j++) {
            u = units[j]
            if (status[r, u] != "done" || naborts[r, u]) early[r]++
            if (b == "-" || !ran[b, u] || !ran[r, u]) continue
            missing_total = 0
            for (k = 1; k <= nnames[u]; k++) {
                nm = names[u, k]
                a = ok[b, u, nm] + 0; c = ok[r, u, nm] + 0; e = err[r, u, nm] + 0; ab = aborts[r, u, nm] + 0
                if (a > c) {
                    # Passed directly more often than through the tunnel: each missing pass is a
                    # failure, else the test it aborted in, else a test that never ran.
                    d = a - c
                    nf = (e < d) ? e : d
                    for (x = 0; x < nf; x++) add_failure(u, nm, r, errmsg[r, u, nm])
                    d -= nf
                    nf = (ab < d) ? ab : d
                    for (x = 0; x < nf; x++) add_failure(u, nm, r, abort_why[r, u, nm])
                    missing_total += d - nf
                }
                if (err[b, u, nm] + 0 > 0 && c > 0) {
                    if (!((u, nm) in od_idx)) {
                        od_idx[u, nm] = ++nod; od_unit[nod] = u; od_name[nod] = nm
                        od_runs[nod] = r; od_msg[nod] = errmsg[b, u, nm]
                    } else od_runs[od_idx[u, nm]] = od_runs[od_idx[u, nm]] ", " r
                }
            }
            # Ended early between tests (no test to blame) where the baseline ran to its end.
            if (status[r, u] != "done" && in_test[r, u] == "-" && status[b, u] == "done")
                add_failure(u, "(unit ended early)", r, status[r, u] ": " why[r, u])
            never[r, u] = missing_total; never_total[r] += missing_total
        }
    }

    print "# Redis's test suite through ectunnel"
    print ""
    print title
    print ""
    print "| run | what | passed | failed | skipped | units aborted | fail only via tunnel | never ran via tunnel | shared requests / own sessions | time |"
    print "|---|---|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= nruns; i++) {
        r = runs[i]
        tun = base[r] != "-"
        printf "| %s | %s | %d | %d | %d | %d | %s | %s | %s | %s |\n", r, md(desc[r]), passed[r], failed[r], skipped[r], early[r], \
            tun ? tunnel_only[r] + 0 : "-", tun ? never_total[r] + 0 : "-", \
            has_metrics[r] ? shared_req[r] " / " own_sess[r] : "-", dur(secs[r])
    }
    print ""
    print "Skipped: tests and whole `start_server` blocks the suite leaves out (tagged `external:skip`, `singledb:skip` with `--singledb`, or excluded by `--tags`), and the tests skipped after they aborted a unit (in a tunnel run, also those that abort its baseline). \"Fail only via tunnel\": passed in the baseline run (`direct`, or `direct-singledb` for a `-singledb` run) and failed through the tunnel, counting the test a unit was aborted or hung in. \"Never ran\": passed in the baseline, absent through the tunnel (its unit ended early). Shared requests / own sessions: the tunnel's `ectunnel_shared_requests_total` / `ectunnel_own_sessions_total`, summed over the run's units."

    gate = 0
    print ""
    print "## Tests that fail only through the tunnel"
    print ""
    if (nfail == 0) print "None."
    else {
        print "| unit | test | runs | failure (first run listed) |"
        print "|---|---|---|---|"
        for (i = 1; i <= nfail; i++) {
            k = fail_key[i]
            reason = allowed(fail_unit[i], fail_name[i])
            if (reason == "") gate++
            printf "| %s | %s | %s | %s%s |\n", fail_unit[i], md(fail_name[i]), fail_runs[k], \
                md(fail_msg[k], 600), reason == "" ? "" : "<br>**allowed:** " md(reason)
        }
    }

    print ""
    print "## Units aborted in a test (exception, hang, timeout) or ended early"
    print ""
    print "A unit aborted in a test is run again with that test skipped (`--resume`); \"never ran\" counts the tests that passed in the baseline and did not run through the tunnel even so."
    print ""
    any = 0
    for (i = 1; i <= nruns; i++) {
        r = runs[i]
        for (j = 1; j <= nunits; j++) {
            u = units[j]
            if (status[r, u] == "done" && !naborts[r, u]) continue
            if (!any) {
                print "| run | unit | aborted in | what happened | unit's end | never ran |"
                print "|---|---|---|---|---|---|"
                any = 1
            }
            end_ = status[r, u] == "done" ? "ran to its end after " attempts[r, u] " attempts" : status[r, u] (in_test[r, u] == "-" ? ", between tests: " md(why[r, u], 300) : " (no more attempts)")
            nev = base[r] == "-" ? "-" : never[r, u] + 0
            if (!naborts[r, u]) printf "| %s | %s | - | - | %s | %s |\n", r, u, end_, nev
            for (x = 1; x <= naborts[r, u]; x++)
                printf "| %s | %s | %s | %s | %s | %s |\n", r, u, md(ab_name[r, u, x]), md(ab_msg[r, u, x], 400), \
                    x == naborts[r, u] ? end_ : "", x == naborts[r, u] ? nev : ""
        }
    }
    if (!any) print "None."
    print ""
    print "## Passed tests per unit, where a tunnel run differs from its baseline"
    print ""
    hdr = "| unit |"; sep = "|---|"
    for (i = 1; i <= nruns; i++) { hdr = hdr " " runs[i] " |"; sep = sep "---|" }
    any = 0
    for (j = 1; j <= nunits; j++) {
        u = units[j]; differ = 0
        for (i = 1; i <= nruns; i++) {
            r = runs[i]; b = base[r]
            if (b != "-" && (okunit[r, u] + 0 != okunit[b, u] + 0 || errunit[r, u] + 0 != errunit[b, u] + 0 || \
                naborts[r, u] + 0 > 0 || status[r, u] != status[b, u])) differ = 1
        }
        if (!differ) continue
        if (!any) { print hdr; print sep; any = 1 }
        line = "| " u " |"
        for (i = 1; i <= nruns; i++) {
            r = runs[i]
            cell = okunit[r, u] + 0
            if (errunit[r, u] + 0) cell = cell ", " errunit[r, u] " failed"
            if (naborts[r, u]) cell = cell ", " naborts[r, u] " aborted"
            if (status[r, u] != "done") cell = cell ", " status[r, u]
            line = line " " cell " |"
        }
        print line
    }
    if (!any) print "Every tunnel run passed as many tests as its baseline in every unit."

    print ""
    print "## Units with no test in external mode"
    print ""
    line = ""
    for (j = 1; j <= nunits; j++) {
        u = units[j]; none = 1
        for (i = 1; i <= nruns; i++) if (okunit[runs[i], u] + errunit[runs[i], u] + naborts[runs[i], u] > 0 || status[runs[i], u] != "done") none = 0
        if (none) line = line (line == "" ? "" : ", ") u
    }
    print (line == "" ? "None." : line " (every test tagged `external:skip`, or excluded by `--tags`).")

    print ""
    print "## Tests that fail in a baseline run (directly)"
    print ""
    any = 0
    for (i = 1; i <= nruns; i++) {
        r = runs[i]
        if (base[r] != "-") continue
        for (j = 1; j <= nunits; j++) {
            u = units[j]
            for (k = 1; k <= nnames[u]; k++) {
                nm = names[u, k]
                if (!err[r, u, nm]) continue
                if (!any) { print "| run | unit | test | failure |"; print "|---|---|---|---|"; any = 1 }
                printf "| %s | %s | %s | %s |\n", r, u, md(nm), md(errmsg[r, u, nm], 300)
            }
        }
    }
    if (!any) print "None."

    print ""
    print "## Tests that fail directly but pass through the tunnel"
    print ""
    if (nod == 0) print "None."
    else {
        print "| unit | test | passes in | direct failure |"
        print "|---|---|---|---|"
        for (i = 1; i <= nod; i++) printf "| %s | %s | %s | %s |\n", od_unit[i], md(od_name[i]), od_runs[i], md(od_msg[i], 300)
    }
    print gate > gatefile
}
