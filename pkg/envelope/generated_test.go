package envelope_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestGeneratedCodeIsFresh regenerates types.pb.go and types_vtproto.pb.go
// from proto/types.proto and fails when a committed file differs: run
// `make proto`.
func TestGeneratedCodeIsFresh(t *testing.T) {
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		t.Fatal("protoc not found: run `make test` (it installs protobuf-compiler with apt-get) or `apt-get install protobuf-compiler`")
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	plugin, err := exec.Command("go", "tool", "-n", "protoc-gen-go").Output()
	if err != nil {
		t.Fatalf("locating protoc-gen-go (go tool -n protoc-gen-go): %v", err)
	}
	vtplugin, err := exec.Command("go", "tool", "-n", "protoc-gen-go-vtproto").Output()
	if err != nil {
		t.Fatalf("locating protoc-gen-go-vtproto (go tool -n protoc-gen-go-vtproto): %v", err)
	}
	// Read the schema here too so that go test's cache notices edits to it.
	if _, err := os.ReadFile(filepath.Join(root, "proto", "types.proto")); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command(protoc,
		"--plugin=protoc-gen-go="+strings.TrimSpace(string(plugin)),
		"--go_out="+out, "--go_opt=module=github.com/rmb-go/rmb",
		"--plugin=protoc-gen-go-vtproto="+strings.TrimSpace(string(vtplugin)),
		"--go-vtproto_out="+out, "--go-vtproto_opt=module=github.com/rmb-go/rmb,features=unmarshal",
		"proto/types.proto")
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, msg)
	}
	for _, name := range []string{"types.pb.go", "types_vtproto.pb.go"} {
		fresh, err := os.ReadFile(filepath.Join(out, "pkg", "envelope", name))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(filepath.Join(root, "pkg", "envelope", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Fatalf("pkg/envelope/%s is stale: run `make proto` and commit the result", name)
		}
	}
}
