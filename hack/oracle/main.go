// Command oracle prints the build context BuildKit would receive for a Dockerfile build, computed with the real Go
// code BuildKit and its client use: github.com/moby/patternmatcher (with ignorefile) and github.com/tonistiigi/fsutil.
// buildopt's differential test (tests/it/differential.rs) runs it beside `buildopt hash --list` and requires the same
// output.
//
// Usage: oracle CONTEXT DOCKERFILE
//
//	oracle match < CASES
//
// The second form checks single patterns: each input line is a hex-encoded pattern followed by hex-encoded paths
// (space-separated); each output line has one character per path, from patternmatcher.New([pattern]) and
// MatchesOrParentMatches(path): `1` match, `0` no match, `E` a matching error, or the single character `N` when New
// rejects the pattern.
//
//	oracle tables
//
// The third form prints Go's Unicode tables as buildopt embeds them (src/context/go_unicode.txt): one line per
// unicode.Categories and unicode.Scripts name, sorted, with the code point ranges it holds (hex, surrogates left
// out since no path can hold one).
//
// What it mirrors, step by step (BuildKit frontend/dockerui/config.go, the same in v0.13 and today):
//
//  1. The Dockerfile's directory is transferred as local `dockerfile` with followpaths [NAME, NAME.dockerignore]
//     (plus `dockerfile` when NAME is `Dockerfile`). The sender resolves followpaths with fsutil.FollowLinks and
//     sends the filtered walk; the daemon's copy holds exactly those entries. The frontend then reads
//     NAME.dockerignore from that copy with continuity's fs.RootPath (symlinks followed inside the root, absolute
//     targets taken relative to it, `..` clamped at it). We replicate the sent entries into a temporary directory and
//     do the same RootPath + read there. If the read succeeds (even when the file is empty), that is the ignore file.
//  2. Otherwise the context is transferred with followpaths [.dockerignore] and `.dockerignore` is read the same way,
//     with every error ignored (missing, a directory, a symlink loop: no patterns at all).
//  3. Non-empty content is parsed with ignorefile.ReadAll.
//  4. The daemon sends the patterns to the client as gRPC metadata (`exclude-patterns`). BuildKit query-escapes every
//     value when some value has a byte >= 0x80; otherwise the values go raw, and grpc-go refuses a value with a byte
//     < 0x20 or > 0x7e, which fails the build.
//  5. The client walks the context through fsutil.NewFilterFS(fsutil.NewFS(ctx), {ExcludePatterns}) and sends every
//     entry in walk order.
//
// Output: one line per entry, directories with a trailing `/`, quoted as `buildopt hash --list` quotes (see quote).
// Where real BuildKit fails the build instead (ReadAll error, invalid pattern, a pattern failing during the walk,
// the metadata refusal, an ignore file that is a fifo or device the daemon would block on), the only output is one
// `error: ...` line and the exit code is 3. Exit code 1 is a failure of the oracle itself.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	gofs "io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/containerd/continuity/fs"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"github.com/tonistiigi/fsutil"
	"github.com/tonistiigi/fsutil/types"
)

const exitRefused = 3

// refused is an error that real BuildKit would fail the build with.
type refused struct{ msg string }

func (r refused) Error() string { return r.msg }

func main() {
	if len(os.Args) == 2 && os.Args[1] == "match" {
		if err := matchCases(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "oracle: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) == 2 && os.Args[1] == "tables" {
		printTables(os.Stdout)
		return
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: oracle CONTEXT DOCKERFILE | oracle match | oracle tables")
		os.Exit(1)
	}
	lines, err := run(os.Args[1], os.Args[2])
	if err != nil {
		if r, ok := err.(refused); ok {
			fmt.Printf("error: %s\n", oneLine(r.msg))
			os.Exit(exitRefused)
		}
		fmt.Fprintf(os.Stderr, "oracle: %v\n", err)
		os.Exit(1)
	}
	out := bytes.Buffer{}
	for _, l := range lines {
		out.WriteString(l)
		out.WriteByte('\n')
	}
	os.Stdout.Write(out.Bytes())
}

func run(contextDir, dockerfile string) ([]string, error) {
	name := filepath.Base(dockerfile)
	follow := []string{name, name + ".dockerignore"}
	if path.Base(name) == "Dockerfile" {
		follow = append(follow, path.Join(path.Dir(name), "dockerfile"))
	}
	content, ok, err := readFromCopy(filepath.Dir(dockerfile), follow, name+".dockerignore")
	if err != nil {
		return nil, err
	}
	if !ok {
		content, ok, err = readFromCopy(contextDir, []string{".dockerignore"}, ".dockerignore")
		if err != nil {
			return nil, err
		}
		if !ok {
			content = nil // read errors are ignored here
		}
	}
	var patterns []string
	if len(content) != 0 {
		patterns, err = ignorefile.ReadAll(bytes.NewBuffer(content))
		if err != nil {
			return nil, refused{fmt.Sprintf("failed parsing dockerignore: %v", err)}
		}
	}
	if err := metadataCheck(patterns); err != nil {
		return nil, err
	}
	return walk(contextDir, patterns)
}

// metadataCheck mirrors how the exclude patterns travel as gRPC metadata (BuildKit session/filesync: values are
// url.QueryEscape'd only when some value is not ASCII; grpc-go refuses the others' control bytes).
func metadataCheck(patterns []string) error {
	for _, p := range patterns {
		for i := 0; i < len(p); i++ {
			if p[i] > 0x7f {
				return nil // every value is query-escaped
			}
		}
	}
	for _, p := range patterns {
		for i := 0; i < len(p); i++ {
			if p[i] < 0x20 || p[i] > 0x7e {
				return refused{fmt.Sprintf("header key \"exclude-patterns\" contains value with non-printable ASCII characters: %q", p)}
			}
		}
	}
	return nil
}

// readFromCopy replicates what the sender would transfer of dir for these followpaths into a temporary directory,
// then reads file from it as the frontend's ReadFile does. ok is false when that read fails.
func readFromCopy(dir string, followpaths []string, file string) (content []byte, ok bool, err error) {
	base, err := os.MkdirTemp("", "oracle-copy-")
	if err != nil {
		return nil, false, err
	}
	defer os.RemoveAll(base)
	// The copy sits deep below directories holding nothing else, so that a symlink whose `..` leaves the copy
	// (which the kernel follows during RootPath's lstat calls) finds nothing there, as it would on the daemon.
	tmp := filepath.Join(base, "fence", "fence", "fence", "fence", "fence", "fence", "fence", "fence", "copy")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, false, err
	}
	src, err := fsutil.NewFS(dir)
	if err != nil {
		return nil, false, err
	}
	filtered, err := fsutil.NewFilterFS(src, &fsutil.FilterOpt{FollowPaths: followpaths})
	if err != nil {
		return nil, false, refused{fmt.Sprintf("transferring %s: %v", dir, err)}
	}
	special := map[string]bool{}
	err = filtered.Walk(context.Background(), "/", func(p string, entry gofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := entry.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*types.Stat)
		dst := filepath.Join(tmp, st.Path)
		mode := os.FileMode(st.Mode)
		switch {
		case mode.IsDir():
			return os.Mkdir(dst, 0o755)
		case mode&os.ModeSymlink != 0:
			return os.Symlink(st.Linkname, dst)
		case mode&os.ModeType != 0:
			// A fifo or device: the daemon would create it, and its read would block or read a device.
			special[dst] = true
			return os.WriteFile(dst, nil, 0o644)
		default:
			// Regular files, and sockets (whose socket bit the sender clears; opening one fails, so the daemon
			// gets an empty file).
			data, err := os.ReadFile(filepath.Join(dir, st.Path))
			if err != nil {
				data = nil
			}
			return os.WriteFile(dst, data, 0o644)
		}
	})
	if err != nil {
		return nil, false, refused{fmt.Sprintf("transferring %s: %v", dir, err)}
	}
	resolved, err := fs.RootPath(tmp, file)
	if err != nil {
		return nil, false, nil
	}
	if special[resolved] {
		return nil, false, refused{fmt.Sprintf("%s resolves to a fifo or device", file)}
	}
	f, err := os.Open(resolved)
	if err != nil {
		return nil, false, nil
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, false, nil
	}
	return data, true, nil
}

func walk(contextDir string, patterns []string) ([]string, error) {
	src, err := fsutil.NewFS(contextDir)
	if err != nil {
		return nil, err
	}
	filtered, err := fsutil.NewFilterFS(src, &fsutil.FilterOpt{ExcludePatterns: patterns})
	if err != nil {
		return nil, refused{err.Error()}
	}
	var lines []string
	err = filtered.Walk(context.Background(), "/", func(p string, entry gofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := entry.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*types.Stat)
		name := filepath.ToSlash(st.Path)
		if os.FileMode(st.Mode).IsDir() {
			name += "/"
		}
		lines = append(lines, quote(name))
		return nil
	})
	if err != nil {
		if strings.Contains(err.Error(), "match") {
			return nil, refused{err.Error()}
		}
		return nil, err
	}
	return lines, nil
}

// quote prints a path as buildopt's `hash --list` does: raw, unless it holds a control byte, `"`, `\` or invalid
// UTF-8; then in double quotes with `\\ \" \n \t \r` and `\xNN` for every other control byte and invalid byte.
func quote(s string) string {
	plain := utf8.ValidString(s)
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		plain = c >= 0x20 && c != 0x7f && c != '"' && c != '\\'
	}
	if plain {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case r == '"':
			b.WriteString(`\"`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	b.WriteByte('"')
	return b.String()
}

func runtimeVersion() string { return runtime.Version() }

func oneLine(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\n", `\n`), "\r", `\r`)
}

// matchCases answers the `match` form (see the package doc).
func matchCases(in io.Reader, out io.Writer) error {
	r := bufio.NewReader(in)
	w := bufio.NewWriter(out)
	defer w.Flush()
	for {
		line, err := r.ReadString('\n')
		if err == io.EOF && line == "" {
			return nil
		}
		if err != nil && err != io.EOF {
			return err
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			return fmt.Errorf("empty case")
		}
		pattern, err := hex.DecodeString(fields[0])
		if err != nil {
			return err
		}
		if _, err := patternmatcher.New([]string{string(pattern)}); err != nil {
			w.WriteString("N\n")
			continue
		}
		for _, f := range fields[1:] {
			path, err := hex.DecodeString(f)
			if err != nil {
				return err
			}
			// A fresh matcher per path: after a failed compile, patternmatcher would dereference a nil regexp.
			pm, _ := patternmatcher.New([]string{string(pattern)})
			switch m, err := pm.MatchesOrParentMatches(string(path)); {
			case err != nil:
				w.WriteByte('E')
			case m:
				w.WriteByte('1')
			default:
				w.WriteByte('0')
			}
		}
		w.WriteByte('\n')
	}
}

// printTables answers the `tables` form (see the package doc).
func printTables(out io.Writer) {
	w := bufio.NewWriter(out)
	defer w.Flush()
	tables := map[string]*unicode.RangeTable{}
	for k, t := range unicode.Categories {
		tables[k] = t
	}
	for k, t := range unicode.Scripts {
		tables[k] = t
	}
	names := make([]string, 0, len(tables))
	for k := range tables {
		names = append(names, k)
	}
	sort.Strings(names)
	fmt.Fprintf(w, "# Go %s unicode tables (Unicode %s): generated by `oracle tables`, checked by tests/it/differential.rs\n",
		strings.TrimPrefix(runtimeVersion(), "go"), unicode.Version)
	for _, k := range names {
		w.WriteString(k)
		in := false
		var lo rune
		for r := rune(0); r <= unicode.MaxRune+1; r++ {
			has := r <= unicode.MaxRune && (r < 0xD800 || r > 0xDFFF) && unicode.Is(tables[k], r)
			if has && !in {
				lo, in = r, true
			}
			if !has && in {
				fmt.Fprintf(w, " %x-%x", lo, r-1)
				in = false
			}
		}
		w.WriteByte('\n')
	}
}
