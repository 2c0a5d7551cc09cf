package exectest

import "testing"

func TestSplitSections(t *testing.T) {
	data := "ignored preamble\n-- 0.argv --\n[\"lvm\"]\n-- 0.stdout --\na\n-- b\n-- result --\nok\n"
	got := SplitSections([]byte(data))
	want := []Section{{"0.argv", "[\"lvm\"]\n"}, {"0.stdout", "a\n-- b\n"}, {"result", "ok\n"}}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("section %d = %q, want %q", i, got[i], want[i])
		}
	}
	if n, f, err := CallKey("1.stderr", 1); err != nil || n != 1 || f != "stderr" {
		t.Errorf("CallKey(1.stderr) = %d, %q, %v", n, f, err)
	}
	for _, bad := range []string{"2.stderr", "x.argv", "-1.rc", "result"} {
		if _, _, err := CallKey(bad, 1); err == nil {
			t.Errorf("CallKey(%q) accepted", bad)
		}
	}
}
