package peer

import "testing"

func TestPolicy(t *testing.T) {
	pol, err := ParsePolicy([]byte(`
default: deny
rules:
  - commands: ["calc.*"]
    allow: [41, "55"]
  - commands: ["admin.*"]
    deny: ["*"]
  - commands: ["pub.*", "rmb.version"]
    deny: [66]
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		twin uint32
		cmd  string
		want bool
	}{
		{41, "calc.add", true},
		{55, "calc.add", true},
		{66, "calc.add", false},
		{41, "admin.reset", false},
		{41, "pub.read", true},
		{66, "pub.read", false},
		{66, "rmb.version", false},
		{41, "rmb.version", true},
		{41, "other", false},
	}
	for _, tt := range tests {
		if got := pol.Allow(tt.twin, tt.cmd); got != tt.want {
			t.Errorf("Allow(%d, %q) = %v, want %v", tt.twin, tt.cmd, got, tt.want)
		}
	}
	var none *Policy
	if !none.Allow(1, "x") {
		t.Error("nil policy denies")
	}
	empty, err := ParsePolicy(nil)
	if err != nil || !empty.Allow(1, "x") {
		t.Errorf("empty policy: %v", err)
	}
	for _, bad := range []string{"default: maybe", "rules:\n  - allow: [1]", "rules:\n  - commands: [\"[\"]", "rules:\n  - commands: [x]\n    allow: [abc]", "rules: 5"} {
		if _, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
