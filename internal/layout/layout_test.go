// Package layout holds no code: its tests keep the house in order. They
// check the arrows between packages (the data path runs ingress → queue →
// relay → submit → token, and nothing shipped leans on a test kit), that
// the shipped build's crash points are no-ops, and that the repository
// stands on its own (no built binaries, nothing that points outside it).
package layout

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// deps lists the packages pkg imports, directly or not (go list -deps).
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

func TestImportArrows(t *testing.T) {
	for _, tc := range []struct {
		pkg, mustNot, why string
	}{
		{"relay365/cmd/relay", "testing", "test kits stay out of the shipped binary"},
		{"relay365/cmd/authtool", "testing", "test kits stay out of the shipped binary"},
		{"relay365/cmd/authtool", "relay365/internal/relay", "authtool sends one test mail through the session layer, not the delivery engine"},
		{"relay365/internal/consent", "relay365/internal/relay", "consent uses the session layer (submit), not the engine"},
		{"relay365/internal/submit", "relay365/internal/relay", "the session layer sits below the engine"},
		{"relay365/internal/pacing", "relay365/internal/relay", "the pacing budget is shared with the consent step: it sits below the engine"},
		{"relay365/internal/submit", "relay365/internal/queue", "the session layer knows nothing of queues"},
		{"relay365/internal/relay", "relay365/internal/consent", "the engine does not reach back up to the consent step"},
		{"relay365/internal/relay/relaytest", "relay365/internal/consent", "the engine's test kit does not reach back up to the consent step"},
	} {
		if slices.Contains(deps(t, tc.pkg), tc.mustNot) {
			t.Errorf("%s depends on %s: %s", tc.pkg, tc.mustNot, tc.why)
		}
	}
}

// TestCrashPointsOnlyWithTheirTag: the shipped relay has the crash
// points (internal/crashpoint) compiled as no-ops: in a build without
// the crashpoints tag the package is its no-op file alone and imports
// nothing, so nothing in it can read RELAY_CRASHPOINT or signal the
// process. A build with the tag has the hook, and relay uses the package,
// so the check is about the binary that ships.
func TestCrashPointsOnlyWithTheirTag(t *testing.T) {
	const pkg = "relay365/internal/crashpoint"
	if !slices.Contains(deps(t, "relay365/cmd/relay"), pkg) {
		t.Fatalf("relay365/cmd/relay no longer uses %s: move this check with the crash points", pkg)
	}
	list := func(tags string) (files, imports []string) {
		out, err := exec.Command("go", "list", "-tags", tags, "-f", `{{join .GoFiles ","}};{{join .Imports ","}}`, pkg).Output()
		if err != nil {
			t.Fatalf("go list -tags %q %s: %v", tags, pkg, err)
		}
		f, i, _ := strings.Cut(strings.TrimSpace(string(out)), ";")
		return strings.Split(f, ","), strings.FieldsFunc(i, func(r rune) bool { return r == ',' })
	}
	if files, imports := list(""); !slices.Equal(files, []string{"doc.go", "off.go"}) || len(imports) != 0 {
		t.Errorf("%s without build tags: files %v importing %v, want doc.go and off.go importing nothing", pkg, files, imports)
	}
	if files, imports := list("crashpoints"); !slices.Contains(files, "on.go") || !slices.Contains(imports, "os") {
		t.Errorf("%s with -tags crashpoints: files %v importing %v, want on.go, which reads the environment", pkg, files, imports)
	}
}

// tracked lists the files git tracks, relative to the repository root.
func tracked(t *testing.T) (root string, files []string) {
	t.Helper()
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	root = strings.TrimSpace(string(top))
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Split(string(out), "\x00") {
		if f != "" {
			files = append(files, f)
		}
	}
	return root, files
}

func TestNoLargeFilesButTestData(t *testing.T) {
	root, files := tracked(t)
	for _, f := range files {
		st, err := os.Stat(filepath.Join(root, f))
		if err != nil {
			continue // deleted in the work tree
		}
		if st.Size() > 1<<20 && !strings.Contains(f, "testdata/") {
			t.Errorf("%s is %d bytes: a built binary or data that belongs elsewhere", f, st.Size())
		}
	}
}

// outside matches a reference to a path outside the repository: the
// developers' notes beside it, or an absolute path on a build machine.
var outside = regexp.MustCompile(`\.\./shared|/work/|shared/(DESIGN|OFFICE365)\.md`)

func TestNothingPointsOutside(t *testing.T) {
	root, files := tracked(t)
	for _, f := range files {
		switch filepath.Ext(f) {
		case ".go", ".md", ".yml", ".yaml", ".conf", ".json", ".html", ".service", "":
		default:
			continue
		}
		if strings.HasSuffix(f, "layout_test.go") {
			continue // the pattern itself
		}
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			continue
		}
		for i, line := range strings.Split(string(b), "\n") {
			if outside.MatchString(line) {
				t.Errorf("%s:%d points outside the repository: %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
}
