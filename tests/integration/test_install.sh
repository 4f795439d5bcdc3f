#!/bin/sh
# Install into a staging directory, then do what a plugin author does:
# build a plugin against the installed <consumers/plugin.h> found through
# `pkg-config consumers-plugin`, name it in a pool file, start the
# installed daemon and stream items to it with the installed CLI.
set -eu
top_builddir=${top_builddir:-$(pwd)}
stage=$(mktemp -d "${TMPDIR:-/tmp}/cnsd-install.XXXXXX")
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$stage"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$stage/log" ] && cat "$stage/log" >&2; exit 1; }

make -s -C "$top_builddir" install DESTDIR="$stage/root" >/dev/null
# The workers' system user: a sysusers.d file under the prefix's
# lib/sysusers.d (configure --with-sysusersdir moves it).
prefix=$(sed -n 's/^prefix = //p' "$top_builddir/Makefile")
sysusers="$stage/root$prefix/lib/sysusers.d/consumersd.conf"
[ -f "$sysusers" ] || fail "sysusers.d file not installed at $sysusers"
grep -q '^u consumersd-worker ' "$sysusers" ||
	fail "the sysusers.d file does not create consumersd-worker"
make -s -C "$top_builddir" install-sysusersDATA DESTDIR="$stage/other" \
	sysusersdir=/elsewhere/sysusers.d >/dev/null
[ -f "$stage/other/elsewhere/sysusers.d/consumersd.conf" ] ||
	fail "sysusersdir does not move the sysusers.d file"
pc=$(find "$stage/root" -name consumers-plugin.pc)
[ -n "$pc" ] || fail "consumers-plugin.pc was not installed"
header=$(find "$stage/root" -path '*/consumers/plugin.h')
[ -n "$header" ] || fail "consumers/plugin.h was not installed"
daemon=$(find "$stage/root" -type f -name consumersd)
cli=$(find "$stage/root" -type f -path '*/bin/consumers')
plugins=$(dirname "$(find "$stage/root" -name concat.so)")
for page in consumersd.8 consumers.1 consumersd.conf.5 consumers-plugin.3 \
    consumers-protocol.7; do
	find "$stage/root" -name "$page" | grep -q . || fail "man page $page missing"
done
# consumers-protocol(7) is made from doc/protocol.md: every op, every
# refusal code and every key its tables name is in it, and groff reads it
# without complaint (but for a long word in a narrow table column).
top_srcdir=${top_srcdir:-$top_builddir/..}
proto7=$(find "$stage/root" -path '*/man7/consumers-protocol.7')
[ -n "$proto7" ] || fail "consumers-protocol.7 is not under man7"
words=$(sed -n 's/^| `\([a-z_]*\)` |.*/\1/p' "$top_srcdir/doc/protocol.md")
[ "$(echo "$words" | wc -l)" -gt 30 ] || fail "no table keys found in protocol.md"
for w in $words; do
	grep -q "fB$w\\\\fR" "$proto7" || fail "consumers-protocol.7 lacks $w"
done
for op in $(grep -o '"op":"[a-z]*"' "$top_srcdir/doc/protocol.md" | sort -u); do
	grep -qF "$op" "$proto7" || fail "consumers-protocol.7 lacks $op"
done
grep -q '^\.SH "11\. QUESTIONS' "$proto7" || fail "consumers-protocol.7 lacks section 11"
if command -v groff >/dev/null; then	# groff-base, with man-db
	warn=$(groff -t -man -Tutf8 -z -ww -Wbreak "$proto7" 2>&1)
	[ -z "$warn" ] || fail "groff warns about consumers-protocol.7: $warn"
fi
# The "Writing consumers" guide, under $(docdir).
guide=$(find "$stage/root" -path '*/share/doc/*/writing-consumers.md')
[ -n "$guide" ] || fail "writing-consumers.md was not installed under docdir"
cmp -s "$guide" "$top_srcdir/doc/writing-consumers.md" ||
	fail "the installed guide differs from doc/writing-consumers.md"

export PKG_CONFIG_PATH="$(dirname "$pc")"
export PKG_CONFIG_SYSROOT_DIR="$stage/root"
cflags=$(pkg-config --cflags consumers-plugin)
case "$cflags" in *"$stage/root"*) ;; *) fail "cflags do not point at the install: $cflags" ;; esac

cat > "$stage/upper.c" <<'PLUGIN'
#include <ctype.h>
#include <string.h>
#include <consumers/plugin.h>

/* Upper-cases string items and joins them; complete counts the results. */
static json_t *upper(cns_items *items, const cns_ctx *ctx)
{
	char buf[256] = "";
	json_t *item;
	(void)ctx;
	while ((item = cns_next(items)) != NULL) {
		const char *s = json_string_value(item);
		size_t n = strlen(buf);
		for (; s && *s && n + 1 < sizeof buf; s++)
			buf[n++] = (char)toupper((unsigned char)*s);
		buf[n] = '\0';
	}
	return json_string(buf);
}

static json_t *count(json_t *results, const cns_ctx *ctx)
{
	(void)ctx;
	return json_integer((json_int_t)json_array_size(results));
}

CONSUMERS_PLUGIN(.consume = upper, .complete = count);
PLUGIN
# shellcheck disable=SC2086
${CC:-cc} -shared -fPIC -Wall -Werror $cflags -o "$stage/upper.so" \
	"$stage/upper.c" $(pkg-config --libs consumers-plugin) \
	|| fail "the plugin does not build against the installed header"

mkdir "$stage/pools.d"
# As root, pools need "user" unless root workers are allowed; the stage
# directory is private to root, so allow them here.
if [ "$(id -u)" -eq 0 ]; then
	echo '{"root_workers": true}' > "$stage/consumersd.conf"
else
	echo '{}' > "$stage/consumersd.conf"
fi
echo '{"plugin": "../upper.so", "workers": 1}' > "$stage/pools.d/upper.json"
# A consumer in Python, run by the exec plugin (whose environment the
# daemon clears), imports the installed module: its result is the file.
syspy=/usr/bin/python3
[ -x "$syspy" ] || syspy=$(command -v python3)
cat > "$stage/imp.py" <<'PY'
import json, sys
sys.stdin.read()
import consumers_client
print(json.dumps(consumers_client.__file__))
PY
printf '{"plugin": "exec", "workers": 1, "args": ["%s", "%s"]}\n' \
	"$syspy" "$stage/imp.py" > "$stage/pools.d/imp.json"
"$daemon" -t -c "$stage/consumersd.conf" -P "$plugins" >/dev/null \
	|| fail "consumersd -t rejects the config"
"$daemon" -c "$stage/consumersd.conf" -s "$stage/s.sock" -P "$plugins" \
	2>"$stage/log" &
pid=$!
i=0
while [ ! -S "$stage/s.sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
out=$(printf '"ab"\n"c"\n' | "$cli" -s "$stage/s.sock" submit upper) \
	|| fail "submit failed: $out"
echo "$out" | grep -q '"results":\["ABC"\]' || fail "unexpected final line: $out"
echo "$out" | grep -q '"completion":1' || fail "no completion: $out"
# The bash completion, under bash-completion/completions as "consumers":
# commands, and the pools of the daemon at the line's -s.
compl=$(find "$stage/root" -path '*/bash-completion/completions/consumers')
[ -n "$compl" ] || fail "the bash completion was not installed"
complete_line() {	# the index of the word to complete, then the words
	bash -c 'source "$1"; shift; COMP_CWORD=$1; shift; COMP_WORDS=("$@");
		_consumers; echo "${COMPREPLY[*]}"' sh "$compl" "$@"
}
[ "$(complete_line 1 "$cli" sub)" = submit ] ||
	fail "completing 'consumers sub': $(complete_line 1 "$cli" sub)"
[ "$(complete_line 4 "$cli" -s "$stage/s.sock" submit u)" = upper ] ||
	fail "completing a pool: $(complete_line 4 "$cli" -s "$stage/s.sock" submit u)"
make -s -C "$top_builddir" install-dist_bashcompletionDATA \
	DESTDIR="$stage/other" bashcompletiondir=/elsewhere/completions >/dev/null
[ -f "$stage/other/elsewhere/completions/consumers" ] ||
	fail "bashcompletiondir does not move the bash completion"
# The installed Python module (into $(pythondir)): its default socket is
# the CLI's, and it streams to the installed daemon.
pymod=$(find "$stage/root" -name consumers_client.py)
[ -n "$pymod" ] || fail "consumers_client.py was not installed"
clidefault=$("$cli" 2>&1 | sed -n 's/.*else \$CONSUMERS_SOCKET, else \(.*\)\.$/\1/p' || true)
out=$(PYTHONPATH=$(dirname "$pymod") CONSUMERS_SOCKET="$stage/s.sock" \
	"${PYTHON:-python3}" -c '
import sys, consumers_client as cc
with cc.Pool("upper") as pool:
    pool.put("ab")
    pool.put("c")
print(cc.DEFAULT_SOCKET, pool.results, pool.completion)') \
	|| fail "the installed Python module failed: $out"
[ "$out" = "$clidefault ['ABC'] 1" ] || \
	fail "the installed Python module: $out (CLI default: $clidefault)"
# Where make install put it is where the system's python3 looks under the
# prefix (Debian: .../dist-packages, not automake's site-packages).
pydir=$(sed -n 's/^pythondir = //p' "$top_builddir/Makefile" |
	sed -e "s|\${PYTHON_PREFIX}|$prefix|" -e "s|\${prefix}|$prefix|")
[ "$pymod" = "$stage/root$pydir/consumers_client.py" ] || \
	fail "consumers_client.py is at $pymod, not in pythondir $pydir"
found=$("$syspy" -c 'import sys
lib = sys.argv[1].rstrip("/") + "/lib"
print("\n".join(d for d in sys.path if d.startswith(lib) and
                d[len(lib):len(lib) + 1] in "/6" and
                d.endswith(("/dist-packages", "/site-packages"))))' "$prefix")
if [ -n "$found" ]; then
	echo "$found" | grep -qxF "$pydir" || \
		fail "the module went to $pydir; $syspy looks under $prefix in: $found"
	# Installed for real (the staged directory bound over pythondir in a
	# private mount namespace, as root): found with no PYTHONPATH at all.
	if [ -d "$pydir" ] && unshare -m true 2>/dev/null; then
		out=$(unshare -m sh -c 'mount --bind "$1" "$2" &&
			exec env -i "$3" -c "import consumers_client as c; print(c.__file__)"' \
			sh "$stage/root$pydir" "$pydir" "$syspy" 2>&1) || \
			fail "$syspy cannot import the installed module: $out"
		[ "$out" = "$pydir/consumers_client.py" ] || \
			fail "$syspy imports consumers_client from $out"
	else
		echo "SKIP: the import by $syspy without PYTHONPATH (needs root, unshare -m and $pydir)"
	fi
fi
out=$(printf '1\n' | "$cli" -s "$stage/s.sock" submit imp) || \
	fail "the exec consumer in Python cannot import the module: $out"
echo "$out" | grep -qF "\"results\":[\"$pymod\"]" || \
	fail "the exec consumer imported another consumers_client: $out"
# The socket unit listens where the CLI looks, and make install made its
# directory.
unit=$(find "$stage/root" -name consumersd.socket)
if [ -n "$unit" ]; then
	listen=$(sed -n 's/^ListenStream=//p' "$unit")
	[ "$listen" = "$clidefault" ] || \
		fail "consumersd.socket listens on $listen, the CLI uses $clidefault"
fi
[ -d "$stage/root$(dirname "$clidefault")" ] || \
	fail "make install did not create $(dirname "$clidefault")"
kill -TERM "$pid"
wait "$pid" || fail "the daemon did not exit 0 on SIGTERM"
pid=
echo "PASS: installed header, pkg-config file, daemon, CLI, its bash completion, man pages, guide and Python module work together"
