package faults

import (
	"math/rand/v2"
	"testing"
)

// These run everywhere: the plan and the labels, not the driver.

func TestPackLivesUsesEveryFaultOnceAndOneFaultPerCall(t *testing.T) {
	var plan []boundary
	for _, op := range ops {
		for n := 1; n <= 3; n++ {
			plan = append(plan, boundary{op, n, "before"}, boundary{op, n, "after"})
		}
	}
	h := &harness{rng: rand.New(rand.NewPCG(1, 2)), ops: ops}
	h.rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	lives := h.packLives(plan, 1)
	seen := map[boundary]int{}
	for i, l := range lives {
		if l.n != i+1 {
			t.Fatalf("life %d numbered %d", i+1, l.n)
		}
		for op, tr := range l.faults {
			if tr.fault.op != op || isInlineOp(op) != l.inline {
				t.Fatalf("life %d (inline %v) holds %v under %s", l.n, l.inline, tr.fault, op)
			}
			if tr.abandon && !abandonable(op) {
				t.Fatalf("life %d abandons %s, which kubelet never abandons", l.n, op)
			}
			if (op == opControllerGrow || op == opNodeGrow) && !l.expand {
				t.Fatalf("life %d has a fault on %s but does not expand", l.n, op)
			}
			seen[tr.fault]++
		}
	}
	for _, b := range plan {
		if seen[b] != 1 {
			t.Fatalf("%v planned once, in %d lives", b, seen[b])
		}
	}
	// Six faults on each op: each life takes one per op of its kind, so six
	// persistent and six inline lives.
	if len(lives) != 12 {
		t.Fatalf("%d lives for %d faults", len(lives), len(plan))
	}
}

func TestBoundariesOnce(t *testing.T) {
	all := boundaries(opSnapshot, 3, []string{"before", "after"}, false)
	once := boundaries(opSnapshot, 3, []string{"before", "after"}, true)
	if len(all) != 6 || len(once) != 4 {
		t.Fatalf("3 calls: %d boundaries, %d once; want 6 and 4", len(all), len(once))
	}
	want := []boundary{{opSnapshot, 1, "before"}, {opSnapshot, 1, "after"}, {opSnapshot, 2, "after"}, {opSnapshot, 3, "after"}}
	for i, b := range once {
		if b != want[i] {
			t.Errorf("boundary %d: %v, want %v", i, b, want[i])
		}
	}
	if d := boundaries(opSnapshot, 2, []string{"before", "during", "after"}, true); len(d) != 5 {
		t.Errorf("2 calls before/during/after once: %v", d)
	}
	// Without "after" every "before" stays: no other boundary stands for it.
	if d := boundaries(opSnapshot, 2, []string{"before", "during"}, true); len(d) != 4 {
		t.Errorf("2 calls before/during once: %v", d)
	}
}

func TestLabels(t *testing.T) {
	for _, c := range []struct{ line, want string }{
		{"3 lvm lvcreate -n carve-x -L 16777216b carve !kill-after", "after #3 lvm lvcreate"},
		{"2 mount -t ext4 -o bind,remount,ro /a /b !kill-before", "before #2 mount remount"},
		{"2 mount -o bind /a /b !kill-before", "before #2 mount bind"},
		{"4 mkfs.ext4 -F -m0 /dev/carve/x !kill-after", "after #4 mkfs.ext4"},
		{"4 mkfs.ext4 -F -m0 /dev/carve/x !kill-during (tool killed)", "during #4 mkfs.ext4 (tool killed)"},
	} {
		if got := firedLabel(c.line); got != c.want {
			t.Errorf("firedLabel(%q) = %q, want %q", c.line, got, c.want)
		}
	}
	if labelKey("after #2 blkid") <= labelKey("during #2 blkid (tool killed)") || labelKey("during #2 blkid") <= labelKey("before #2 blkid") ||
		labelKey("before #10 x") <= labelKey("after #9 x") {
		t.Fatal("labels do not sort by call, then before/during/after")
	}
	if got := csiName("carve.owner=carve.csi.dev,carve.name=ZmF1bHRz"); got != "faults" {
		t.Fatalf("csiName = %q", got)
	}
}

func TestPlanTakesOpsInTurnsAndEveryBoundaryBeforeRepeats(t *testing.T) {
	perOp := map[string][]boundary{}
	for i, op := range ops {
		for n := 1; n <= 1+i%3; n++ {
			perOp[op] = append(perOp[op], boundary{op, n, "before"}, boundary{op, n, "after"})
		}
	}
	h := &harness{rng: rand.New(rand.NewPCG(3, 4)), ops: ops}
	plan := h.plan(perOp, 100)
	if len(plan) != 100 {
		t.Fatalf("%d trials planned", len(plan))
	}
	count := map[string]int{}
	seen := map[boundary]int{}
	for _, b := range plan {
		count[b.op]++
		seen[b]++
	}
	for _, op := range ops {
		if count[op] != 10 {
			t.Errorf("%s: %d trials, want 10", op, count[op])
		}
		// 10 trials over 2, 4 or 6 boundaries: each hit 5, 2-3 or 1-2 times.
		bs := perOp[op]
		for _, b := range bs {
			if lo := 10 / len(bs); seen[b] < lo || seen[b] > lo+1 {
				t.Errorf("%v hit %d times", b, seen[b])
			}
		}
	}
	lives := h.packLives(plan, 1)
	// Every op has 10 faults: 10 persistent lives with 8, 10 inline with 2.
	if len(lives) != 20 {
		t.Fatalf("%d lives", len(lives))
	}
}

// With coverAll, as many trials as boundaries hit each boundary once, even
// when the ops have very different numbers of them.
func TestPlanCoverAll(t *testing.T) {
	perOp := map[string][]boundary{}
	total := 0
	for i, op := range thinOps {
		perOp[op] = boundaries(op, []int{2, 5, 4, 5, 1, 1, 1}[i], []string{"before", "after"}, true)
		total += len(perOp[op])
	}
	if total != 26 {
		t.Fatalf("%d boundaries", total)
	}
	h := &harness{rng: rand.New(rand.NewPCG(5, 6)), ops: thinOps, coverAll: true}
	plan := h.plan(perOp, total+3)
	seen := map[boundary]int{}
	for _, b := range plan[:total] {
		seen[b]++
	}
	if len(seen) != total {
		t.Fatalf("the first %d trials hit %d boundaries: %v", total, len(seen), plan)
	}
	lives := h.packLives(plan[:total], 1)
	// CreateSnapshot and the clone have 6 boundaries each: 6 lives at least.
	if len(lives) < 6 || len(lives) > 8 {
		t.Fatalf("%d lives", len(lives))
	}
}

// planChangesFirst: the first trials hit every boundary where something
// changes (before the first call, after each lvcreate, lvextend, lvchange,
// lvremove), the next ones the kills after an lvs.
func TestPlanChangesFirst(t *testing.T) {
	labels := map[string][]string{
		opCreate:         {"lvm lvs", "lvm lvcreate"},
		opSnapshot:       {"lvm lvs", "lvm lvs", "lvm lvs", "lvm lvcreate", "lvm lvs"},
		opRestore:        {"lvm lvs", "lvm lvs", "lvm lvcreate", "lvm lvchange"},
		opClone:          {"lvm lvs", "lvm lvs", "lvm lvcreate", "lvm lvextend", "lvm lvchange"},
		opDeleteSource:   {"lvm lvremove"},
		opDeleteSnapshot: {"lvm lvremove"},
		opDeleteClone:    {"lvm lvremove"},
	}
	perOp := map[string][]boundary{}
	for _, op := range thinOps {
		perOp[op] = boundaries(op, len(labels[op]), []string{"before", "after"}, true)
	}
	h := &harness{rng: rand.New(rand.NewPCG(7, 8)), ops: thinOps, coverAll: true, labels: labels}
	plan := h.planChangesFirst(perOp, 30)
	if len(plan) != 30 {
		t.Fatalf("%d trials", len(plan))
	}
	seen := map[boundary]bool{}
	for i, b := range plan {
		if ch := changes(b, labels[b.op]); ch != (i < 17) && i < 26 {
			t.Errorf("trial %d: %v (changes %v)", i, b, ch)
		}
		if i < 26 {
			seen[b] = true
		}
	}
	if len(seen) != 26 {
		t.Errorf("the first 26 trials hit %d boundaries", len(seen))
	}
	// CreateVolume(clone) has 4 boundaries that change something: 4 lives.
	if n := len(h.packLives(h.planChangesFirst(perOp, 17), 1)); n != 4 {
		t.Errorf("17 trials in %d lives", n)
	}
}

// The plan on a VG with coverAll (every pool's now): as many trials as
// boundaries (CARVE_FAULTS_TRIALS=all) hit each boundary exactly once, all
// packed into lives. The calls are those of a calibration on the VM rig (52
// boundaries: 26 calls, before and after each; an inline publish has no
// lvchange since its filesystem's UUID proves its zeroing, issue 13).
func TestPlanEachBoundaryOnce(t *testing.T) {
	labels := map[string][]string{
		opCreate:          {"lvm lvcreate", "blkdiscard", "lvm lvchange"},
		opStage:           {"lvm lvs", "blkid", "mkfs.ext4", "mount"},
		opPublish:         {"lvm lvs", "mount bind", "mount remount"},
		opControllerGrow:  {"lvm lvs", "lvm lvs", "lvm lvextend"},
		opNodeGrow:        {"lvm lvs", "blkid", "resize2fs"},
		opUnpublish:       {"umount"},
		opUnstage:         {"umount"},
		opDelete:          {"lvm lvremove"},
		opInlinePublish:   {"lvm lvcreate", "blkdiscard", "blkid", "mkfs.ext4", "mount"},
		opInlineUnpublish: {"umount", "lvm lvremove"},
	}
	perOp := map[string][]boundary{}
	total := 0
	for _, op := range ops {
		perOp[op] = boundaries(op, len(labels[op]), []string{"before", "after"}, false)
		total += len(perOp[op])
	}
	if total != 52 {
		t.Fatalf("%d boundaries, want 52", total)
	}
	h := &harness{rng: rand.New(rand.NewPCG(9, 10)), ops: ops, coverAll: true, labels: labels}
	plan := h.planChangesFirst(perOp, total)
	seen := map[boundary]int{}
	for _, b := range plan {
		seen[b]++
	}
	if len(plan) != total || len(seen) != total {
		t.Fatalf("%d trials hit %d of %d boundaries", len(plan), len(seen), total)
	}
	packed := 0
	for _, l := range h.packLives(plan, 1) {
		packed += len(l.faults)
	}
	if packed != total {
		t.Errorf("%d of %d faults packed into lives", packed, total)
	}
}

// ndctl list prints one namespace as an object, several as an array, and
// regions holding them with -R; the audit must see every one in each shape.
func TestParseNamespaces(t *testing.T) {
	one := `{"dev":"namespace0.0","mode":"fsdax","size":65011712,"blockdev":"pmem0","name":"carve-a-0123456789abcdef"}`
	two := `[` + one + `,{"dev":"namespace0.1","mode":"raw","size":67108864,"name":"carve-b-0123456789abcdef"}]`
	regions := `{"dev":"region0","size":4294836224,"namespaces":` + two + `}`
	for _, c := range []struct {
		in   string
		want int
	}{{"", 0}, {one, 1}, {two, 2}, {regions, 2}, {"[" + regions + "]", 2}} {
		got, err := parseNamespaces([]byte(c.in))
		if err != nil || len(got) != c.want {
			t.Fatalf("parseNamespaces(%s) = %+v, %v; want %d namespaces", c.in, got, err, c.want)
		}
		if c.want > 0 && (got[0].Dev != "namespace0.0" || got[0].Blockdev != "pmem0" || got[0].Mode != "fsdax" || got[0].Size != 65011712) {
			t.Errorf("first namespace %+v", got[0])
		}
	}
	if _, err := parseNamespaces([]byte("{")); err == nil {
		t.Error("bad JSON accepted")
	}
}
