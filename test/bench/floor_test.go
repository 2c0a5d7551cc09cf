package bench

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// floorProgram is a program that only imports packages (their init runs)
// and exits: what linking them costs a process before it does anything.
type floorProgram struct {
	name    string
	imports []string
}

var floorPrograms = []floorProgram{
	{"the Go runtime alone", nil},
	{"gRPC and the CSI spec (any CSI plugin)", []string{
		"google.golang.org/grpc", "github.com/container-storage-interface/spec/lib/go/csi"}},
	{"client-go's scheme and controller-runtime's manager (carve's controller)", []string{
		"k8s.io/client-go/kubernetes/scheme", "sigs.k8s.io/controller-runtime/pkg/manager"}},
	{"both", []string{
		"google.golang.org/grpc", "github.com/container-storage-interface/spec/lib/go/csi",
		"k8s.io/client-go/kubernetes/scheme", "sigs.k8s.io/controller-runtime/pkg/manager"}},
}

// BenchmarkNodeImportFloor prints the resident set (VmRSS) that a static,
// stripped Go program reaches by linking the libraries carve-csi is built on
// and running their package initializers, and nothing else, next to the same
// for every package carve-csi's main imports (carve's own, with their
// inits). One binary serves both roles, so carve-node runs every init of the
// controller's libraries too: this is the floor under BenchmarkNodeFootprint's
// figures (issue 13's 20 MiB goal), measured on the same machine in the same
// run. No control plane needed.
func BenchmarkNodeImportFloor(b *testing.B) {
	dir := filepath.Join(repoRoot(), "_output", "import-floor")
	if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	list := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, "./cmd/carve-csi")
	list.Dir = repoRoot()
	out, err := list.Output()
	if err != nil {
		b.Fatalf("go list ./cmd/carve-csi: %v", err)
	}
	programs := append(floorPrograms, floorProgram{"everything carve-csi's main imports (carve's packages included)", strings.Fields(string(out))})
	rss := make([]int64, len(programs))
	for i, p := range programs {
		bin := buildFloor(b, dir, fmt.Sprintf("p%d", i), p.imports)
		var size int64
		rss[i], size = initRSS(b, bin)
		fmt.Printf("import floor: %s: binary %.1f MB, resident after init %.1f MiB\n", p.name, float64(size)/1e6, float64(rss[i])/mib)
	}
	carve := rss[len(programs)-1] // everything main imports
	fmt.Printf("import floor: carve-node's goal with 100 volumes (issue 13) is %.0f MiB; the inits alone take %.2fx that\n",
		footprintGoal/mib, float64(carve)/footprintGoal)
	b.ReportMetric(float64(carve)/mib, "MiB-carve-init")
}

// buildFloor writes a main package that imports imports (blank) and, once
// their inits ran, prints "ok" and waits for stdin to close; it builds it as
// the image builds carve-csi (static, -s -w) and returns the binary.
func buildFloor(b *testing.B, dir, name string, imports []string) string {
	b.Helper()
	pkg := filepath.Join(dir, name)
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		b.Fatal(err)
	}
	var src strings.Builder
	src.WriteString("package main\n\nimport (\n\t\"io\"\n\t\"os\"\n")
	for _, imp := range imports {
		if imp != "io" && imp != "os" {
			fmt.Fprintf(&src, "\t_ %q\n", imp)
		}
	}
	src.WriteString(")\n\nfunc main() {\n\tos.Stdout.WriteString(\"ok\\n\")\n\tio.Copy(io.Discard, os.Stdin)\n}\n")
	if err := os.WriteFile(filepath.Join(pkg, "main.go"), []byte(src.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(pkg, "floor")
	rel, err := filepath.Rel(repoRoot(), pkg)
	if err != nil {
		b.Fatal(err)
	}
	build := exec.Command("go", "build", "-ldflags", "-s -w", "-o", bin, "./"+rel)
	build.Dir, build.Env = repoRoot(), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", name, err, out)
	}
	return bin
}

// initRSS starts bin, waits for its "ok" (its inits ran) and returns its
// VmRSS then (bytes; the smallest of three runs) and the binary's size. Read
// from /proc while it runs: a child's rusage peak counts the parent's pages,
// which Go's vfork-style exec shares until the exec.
func initRSS(b *testing.B, bin string) (rss, size int64) {
	b.Helper()
	st, err := os.Stat(bin)
	if err != nil {
		b.Fatal(err)
	}
	for range 3 {
		cmd := exec.Command(bin)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "ok\n" {
			b.Fatalf("%s: %q, %v", bin, line, err)
		}
		if r := procStatus(b, cmd.Process.Pid, "VmRSS"); rss == 0 || r < rss {
			rss = r
		}
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Fatalf("%s: %v", bin, err)
		}
	}
	return rss, st.Size()
}
