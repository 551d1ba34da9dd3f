# Redis's own test suite, from the distribution's source package of the installed redis-server,
# so that the suite matches the server it is run against (Debian patches included).
# Sourced by scripts/conformance after scripts/lib/deps.sh (as_root, apt_install).

# The source package of the installed redis-server and its version (with epoch), e.g.
# "redis 5:7.0.15-1~deb12u10".
installed_redis_source() {
    dpkg-query -W -f '${source:Package} ${source:Version}\n' redis-server
}

# ensure_suite_tools: tclsh runs the suite; dpkg-dev brings dpkg-source, which `apt-get source`
# needs to unpack and patch the source package.
ensure_suite_tools() {
    local missing=()
    command -v tclsh >/dev/null || missing+=(tcl)
    command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# deb_src_entries: prints, for every `deb` entry that serves redis-server but has no `deb-src`
# twin, that twin: a copy of the entry (same URIs, suites, components, Signed-By) with deb-src,
# each line prefixed "list<TAB>" (one-line format) or "sources<TAB>" (deb822; stanzas end with an
# empty "sources<TAB>" line). Only repositories that ship redis-server are mirrored: a
# third-party repository often has no Sources index, and `apt-get update` would fail on it.
deb_src_entries() {
    # Repositories offering redis-server, as "URI SUITE" (apt-cache policy's version table).
    local repos
    repos=$(apt-cache policy redis-server | awk '$NF == "Packages" && $2 ~ /:\/\// {
        uri = $2; sub(/\/$/, "", uri); split($3, s, "/"); print uri, s[1] }' | sort -u)
    # Every index target, deb and deb-src, with the entry (file:N) that declared it.
    local targets
    targets=$(apt-get indextargets --format '$(TARGET_OF) $(REPO_URI) $(RELEASE) $(SOURCESENTRY)' | sort -u)
    # The entries to mirror: deb entries of a redis repository whose URI and suite have no
    # Sources target yet.
    local entries
    entries=$(awk -v repos="$repos" '
        BEGIN { n = split(repos, r, "\n"); for (i = 1; i <= n; i++) want[r[i]] = 1 }
        { uri = $2; sub(/\/$/, "", uri); key = uri " " $3 }
        $1 == "deb-src" { have[key] = 1 }
        $1 == "deb" && (key in want) { entry[key] = $4 }
        END { for (k in entry) if (!(k in have)) print entry[k] }' <<<"$targets" | sort -u)
    local e file n
    for e in $entries; do
        file=${e%:*}
        n=${e##*:}
        case $file in
            *.sources)
                # N counts stanzas (separated by empty lines; comment lines are not content).
                # Architectures does not apply to sources; Enabled: no would not be listed.
                awk -v want="$n" '
                    /^#/ { next }
                    /^[ \t]*$/ { in_stanza = 0; next }
                    !in_stanza { stanza++; in_stanza = 1 }
                    stanza != want { next }
                    /^Types:/ { print "sources\tTypes: deb-src"; next }
                    /^(Architectures|Enabled):/ { next }
                    { print "sources\t" $0 }
                    END { print "sources\t" }' "$file"
                ;;
            *)
                # N is the line: "deb [options] URI suite components" -> "deb-src ...".
                sed -n "${n}p" "$file" | sed -E 's/^[[:space:]]*deb[[:space:]]+/deb-src /; s/^/list\t/'
                ;;
        esac
    done
}

# ensure_deb_src: when the entries serving redis-server have no deb-src twins, adds them in
# <sources.list.d>/ectunnel-deb-src.{sources,list}. Returns 0 if it added any, 1 otherwise.
ensure_deb_src() {
    local added parts
    added=$(deb_src_entries)
    [ -n "$added" ] || return 1
    eval "$(apt-config shell parts Dir::Etc::sourceparts/d)"
    echo "adding deb-src entries for redis-server's repositories to $parts (apt-get source needs them)..." >&2
    local kind body
    for kind in sources list; do
        body=$(awk -F'\t' -v k="$kind" '$1 == k { sub(/^[^\t]*\t/, ""); print }' <<<"$added")
        [ -n "$body" ] || continue
        printf '# Added by ectunnel scripts/conformance: source twins of the deb entries that serve\n# redis-server, so that `apt-get source redis` works.\n%s\n' "$body" |
            as_root tee "${parts%/}/ectunnel-deb-src.$kind" >/dev/null
    done
}

# fetch_redis_suite CACHE_DIR: sets suite_src to an unpacked, patched source tree of the
# installed redis-server's source package, fetching it into CACHE_DIR/<package>_<version> the
# first time. Exact version first; a source of the same upstream version (another Debian
# revision: the same tests, give or take a security patch) if the exact one is gone from the
# archive; otherwise an error.
fetch_redis_suite() {
    local cache=$1 pkg ver
    read -r pkg ver < <(installed_redis_source)
    local dir="$cache/${pkg}_${ver#*:}"
    if [ -f "$dir/.complete" ]; then
        suite_src=$(cat "$dir/.complete")
        return 0
    fi
    ensure_suite_tools
    # The index may already hold the version; refresh (and add deb-src) only when it does not.
    local versions
    # apt-cache exits 100 while there is no deb-src entry at all: an empty list, not an error.
    versions=$({ apt-cache showsrc "$pkg" 2>/dev/null || true; } | awk '/^Version:/ { print $2 }')
    if ! grep -qxF "$ver" <<<"$versions"; then
        ensure_deb_src || true
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        versions=$({ apt-cache showsrc "$pkg" 2>/dev/null || true; } | awk '/^Version:/ { print $2 }')
    fi
    local pick=$ver
    if ! grep -qxF "$ver" <<<"$versions"; then
        local upstream=${ver#*:}
        upstream=${upstream%-*}
        pick=$(awk -v u="$upstream" '{ v = $0; sub(/^[0-9]+:/, "", v); sub(/-[^-]*$/, "", v) } v == u' \
            <<<"$versions" | sort -V | tail -1)
        if [ -z "$pick" ]; then
            echo "no source package $pkg $ver (nor another revision of its upstream version) in" \
                "the apt indexes; available: ${versions:-none}. Pass --redis-src DIR." >&2
            return 1
        fi
        echo "warning: $pkg $ver has no source in the archive any more; using $pick" >&2
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    echo "fetching the source of $pkg $pick into $dir..." >&2
    (cd "$dir" && apt-get source -qq "$pkg=$pick" >/dev/null 2>"$dir/apt-get-source.log") || {
        cat "$dir/apt-get-source.log" >&2
        return 1
    }
    # apt-get source unpacks into <package>-<upstream version>/.
    suite_src=$(find "$dir" -mindepth 2 -maxdepth 2 -name runtest -printf '%h\n' | head -1)
    if [ -z "$suite_src" ] || [ ! -f "$suite_src/tests/test_helper.tcl" ]; then
        echo "no tests/test_helper.tcl in the unpacked source under $dir" >&2
        return 1
    fi
    echo "$suite_src" > "$dir/.complete"
}
