// Package faults is carve's crash-consistency test (make test-faults, issue
// #7): carve-csi --mode=node is killed with SIGKILL at a step boundary of
// create, stage, publish (persistent and inline), unpublish, unstage, expand
// and delete, restarted, the interrupted call is retried the way kubelet and
// the sidecars retry it until it succeeds, and then the node is audited:
//
//   - leaked: a carve LV that no volume the test still holds (and no mounted
//     inline target) owns, a device-mapper device of the VG without an LV,
//     or a mount under the kubelet directory that no staged or published
//     volume explains;
//   - lost: a volume the test still holds whose LV is gone, whose staging or
//     target mount is gone or of another device, or whose data file does not
//     read back exactly.
//
// The kill comes from test/faults/faultshim, installed first in the driver's
// PATH under the names of the tools carve runs, so production code carries no
// test branch. Each trial runs one volume's whole life (persistent: create,
// stage, publish, write, [expand], unpublish, unstage, delete; inline:
// publish, write, unpublish) with one fault armed on one call; every trial
// ends with an audit that nothing of it is left.
//
// It needs root, lvm2, e2fsprogs and working device-mapper, so it skips
// unless CARVE_FAULTS_VG names a dedicated volume group (hack/faults.sh runs
// it in the QEMU VM); CARVE_FAULTS_REQUIRE=1 fails instead of skipping.
// CARVE_FAULTS_POOL=pmem runs the same trials on a PMEM region instead
// (CARVE_FAULTS_REGION, default region0; see pool_test.go): carve namespaces
// instead of LVs, no expansion. CARVE_FAULTS_POOL=thin runs snapshot and
// clone lives on an lvm-thin pool instead (thin_test.go: CreateSnapshot,
// volumes from a snapshot and from a volume, the deletes; CARVE_FAULTS_VG,
// CARVE_FAULTS_THINPOOL). Every newly published volume must come up
// empty: the lives run one after another at the same place of the pool, so a
// volume showing the data file of an earlier one is lost (stale) data.
// CARVE_FAULTS_TRIALS (default 100; all: each boundary once) and
// CARVE_FAULTS_SEED (default: the clock; always printed) pick the trials.
package faults

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	osexec "os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	mount "k8s.io/mount-utils"

	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/test/driver"
)

const (
	driverName = "carve.csi.dev"
	ownerTag   = "carve.owner=" + driverName
	nodeID     = "faults-node"
	mib        = int64(1) << 20
	// Small volumes keep mkfs and each trial cheap under emulation.
	volSize   = 16 * mib
	grownSize = 32 * mib
	// callTimeout bounds one CSI call; lvm and mkfs are slow under TCG.
	callTimeout = 3 * time.Minute
	// maxRetries bounds the kubelet-style retries of an interrupted call.
	maxRetries = 8
)

// shimTools are the names the shim is installed under: every tool carve-csi
// runs itself (lvm through pkg/exec; mount-utils' mount, umount, blkid, fsck,
// mkfs.*, resize2fs, xfs_growfs), and a few it might.
var shimTools = []string{"lvm", "ndctl", "mount", "umount", "blkid", "fsck", "mkfs.ext4", "mkfs.xfs",
	"resize2fs", "xfs_growfs", "e2fsck", "fsck.ext4", "dumpe2fs", "tune2fs", "wipefs", "xfs_io",
	"blkdiscard", "lsblk"} // blkdiscard: lvm pools zero new LVs; lsblk: pools from disks

// The operations a fault can interrupt.
const (
	opCreate          = "CreateVolume"
	opStage           = "NodeStageVolume"
	opPublish         = "NodePublishVolume"
	opUnpublish       = "NodeUnpublishVolume"
	opUnstage         = "NodeUnstageVolume"
	opControllerGrow  = "ControllerExpandVolume"
	opNodeGrow        = "NodeExpandVolume"
	opDelete          = "DeleteVolume"
	opInlinePublish   = "NodePublishVolume(inline)"
	opInlineUnpublish = "NodeUnpublishVolume(inline)"
)

var ops = []string{opCreate, opStage, opPublish, opControllerGrow, opNodeGrow, opUnpublish, opUnstage,
	opDelete, opInlinePublish, opInlineUnpublish}

func isInlineOp(op string) bool { return op == opInlinePublish || op == opInlineUnpublish }

// boundary is one fault: kill the driver before or after the nth tool call
// of op, or during it (together with the tool).
type boundary struct {
	op   string
	n    int
	when string // "before", "after" or "during"
}

// maxDelay bounds how long a "during" fault lets the tool run: lvm commands
// take 0.3-2.5 s in the emulated VM, mkfs, blkid and mount 0.05-0.5 s (with
// 1.5 s, 20 of 24 tools finished before the kill).
const maxDelay = 400 * time.Millisecond

func (b boundary) String() string { return fmt.Sprintf("%s %s call %d", b.op, b.when, b.n) }

// harness is the driver under test and what the trials share.
type harness struct {
	t       *testing.T
	pool    pool
	kubelet string
	shimDir string
	runner  exec.Host // the test's own lvm: PATH without the shim
	rng     *rand.Rand
	// ops are the operations of this pool's lives: ops, or thinOps.
	ops []string
	// coverAll: plan hits every boundary once before any twice (every pool).
	coverAll bool

	proc     *driver.Process
	pid      int
	conn     *grpc.ClientConn
	ctrl     csi.ControllerClient
	node     csi.NodeClient
	restarts int
	done     int // trials finished
	// abandoned counts trials whose call was not retried but torn down.
	abandoned int
	// pending counts trials whose kill left a copy carve.restoring=pending.
	pending int

	tCalls, tRestarts, tAudits time.Duration

	// calls is how many tool calls each op made in unfaulted runs (the most
	// seen), labels what they were (from the calibration run).
	calls  map[string]int
	labels map[string][]string
	// fsSeen: the filesystem UUID of each volume that came up, and which
	// volume it was, so that a new volume mounting an old filesystem shows.
	fsSeen map[string]string
}

// vol is a volume as the test (kubelet and the sidecars) holds it. Its
// fields change only when the call that changes them succeeded.
type vol struct {
	name    string // CSI name, or kubelet's volume handle for an inline volume
	id      string // volume id
	staging string
	target  string
	created bool // held: CreateVolume (or the inline publish) succeeded, no Delete yet
	staged  bool
	publ    bool
	// uncertain: a stage or publish was interrupted and abandoned, so the
	// mount may or may not exist (kubelet's "uncertain" state); the volume is
	// still owned, and kubelet tears it down.
	uncertain bool
	data      []byte // written to <mount>/data after publish
	thinVol          // the snapshot and clone lives' checks (thin_test.go)
}

// tally is what an audit found.
type tally struct {
	leaked, lost int
	problems     []string
}

func (t *tally) problem(format string, args ...any) {
	t.problems = append(t.problems, fmt.Sprintf(format, args...))
}

// trial is one fault: the kill, the restart, the retried call and the audit.
type trial struct {
	tally
	fault   boundary
	fired   string        // the shim's calls.log line of the call that killed, "" if none
	delay   time.Duration // "during": how long the tool ran before the kill
	retries int
	ran     bool // reported: its call was reached
	// abandon: after the restart the call is not retried; the pod went away
	// meanwhile, so kubelet tears down what may have been set up instead.
	abandon bool
	// pending: the kill left a copy marked carve.restoring=pending, which
	// the retry had to remove and make again (thin lives).
	pending bool
}

// errAbandoned is what call returns for an interrupted call that is abandoned.
var errAbandoned = errors.New("abandoned after the restart")

// abandonable are the calls kubelet may give up on when the pod is deleted
// while they fail: it then unpublishes/unstages the uncertain mount.
func abandonable(op string) bool { return op == opStage || op == opPublish || op == opInlinePublish }

// life is one volume's whole life with a fault armed on some of its calls
// (at most one per call), so the trials share the set-up and tear-down.
type life struct {
	tally
	n      int
	tag    string
	inline bool
	expand bool
	thin   bool // a snapshot and clone life (thinLife)
	vols   []*vol
	faults map[string]*trial // by op
	// abandoned: a call was abandoned, the rest of the life is teardown.
	abandoned bool
}

func TestFaults(t *testing.T) {
	pl, err := poolFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if reason := pl.checkEnv(); reason != "" {
		if os.Getenv("CARVE_FAULTS_REQUIRE") == "1" {
			t.Fatalf("CARVE_FAULTS_REQUIRE=1 but the fault trials cannot run: %s", reason)
		}
		t.Skipf("skipping the fault trials: %s", reason)
	}
	trials := 100
	if s := os.Getenv("CARVE_FAULTS_TRIALS"); s == "all" {
		trials = 0 // each boundary once
	} else if s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("CARVE_FAULTS_TRIALS=%q: want a positive number or all", s)
		}
		trials = n
	}
	modes := []string{"before", "after"}
	if s := os.Getenv("CARVE_FAULTS_MODES"); s != "" {
		modes = strings.Split(s, ",")
		for _, m := range modes {
			if m != "before" && m != "after" && m != "during" {
				t.Fatalf("CARVE_FAULTS_MODES=%q: want a list of before, after, during", s)
			}
		}
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CARVE_FAULTS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CARVE_FAULTS_SEED=%q: want a number", s)
		}
		seed = n
	}
	nTrials := "one per boundary"
	if trials > 0 {
		nTrials = strconv.Itoa(trials) + " trials"
	}
	fmt.Printf("faults: seed %d (CARVE_FAULTS_SEED=%d repeats this run), %s, kills %s the tool call, %s\n",
		seed, seed, nTrials, strings.Join(modes, "/"), pl)

	h := &harness{t: t, pool: pl, kubelet: t.TempDir(), rng: rand.New(rand.NewPCG(seed, 0x636172766566)),
		calls: map[string]int{}, labels: map[string][]string{}, ops: ops}
	// Every pool plans with coverAll: each op's boundaries all before any
	// op repeats one. Without it, 40 trials on a PMEM region hit 27 of its 34
	// boundaries (ops with many boundaries took turns with ops done long ago).
	h.coverAll = true
	if pl.thin() {
		h.ops = thinOps
	}
	h.installShim()
	if left := h.carveLVs(); len(left) > 0 {
		t.Fatalf("%s must start without carve volumes, has %v", pl, left)
	}
	h.start()

	// Calibration: one unfaulted life of each kind counts each op's calls.
	cal := []*life{{tag: "cal0", expand: pl.canExpand()}, {tag: "cal1", inline: true}}
	if pl.thin() {
		cal = cal[:1]
	}
	for _, l := range cal {
		h.runLife(l)
		if len(l.problems) > 0 || l.leaked > 0 || l.lost > 0 {
			t.Fatalf("calibration (no fault) failed: %d leaked, %d lost: %s", l.leaked, l.lost, strings.Join(l.problems, "; "))
		}
	}
	var bounds []boundary
	perOp := map[string][]boundary{}
	for _, op := range h.ops {
		if !pl.canExpand() && (op == opControllerGrow || op == opNodeGrow) {
			continue
		}
		if h.calls[op] == 0 {
			t.Fatalf("calibration: %s ran no tool (calls: %v): the shim is not in the driver's way", op, h.calls)
		}
		fmt.Printf("faults: %-28s %d tool calls: %s\n", op, h.calls[op], strings.Join(h.labels[op], ", "))
		perOp[op] = boundaries(op, h.calls[op], modes, pl.thin())
		bounds = append(bounds, perOp[op]...)
	}
	if trials == 0 {
		trials = len(bounds)
	}
	lives := h.packLives(h.planChangesFirst(perOp, trials), 1)
	fmt.Printf("faults: %d boundaries (op x tool call x %s); %d trials in %d volume lives\n",
		len(bounds), strings.Join(modes, "/"), trials, len(lives))

	var leaked, lost, fired, bad int
	hits := map[string]map[string]int{} // op -> boundary label -> trials that killed there
	start := time.Now()
	for i := 0; i < len(lives); i++ {
		l := lives[i]
		h.runLife(l)
		// A life that was torn down early (an abandoned call) never reached
		// the calls after it: their faults go to new lives.
		var left []boundary
		for _, op := range h.ops {
			if tr := l.faults[op]; tr != nil && !tr.ran {
				left = append(left, tr.fault)
				delete(l.faults, op)
			}
		}
		if len(left) > 0 && len(l.problems) == 0 {
			lives = append(lives, h.packLives(left, len(lives)+1)...)
		}
		for _, op := range h.ops {
			tr := l.faults[op]
			if tr == nil {
				continue
			}
			if tr.fired != "" {
				fired++
				if hits[op] == nil {
					hits[op] = map[string]int{}
				}
				hits[op][firedLabel(tr.fired)]++
			}
			leaked += tr.leaked
			lost += tr.lost
			if len(tr.problems) > 0 {
				bad++
			}
		}
		leaked += l.leaked
		lost += l.lost
		if len(l.problems) > 0 {
			bad++
		}
		for _, p := range l.problems {
			fmt.Printf("    life %d: %s\n", l.n, p)
			t.Errorf("life %d: %s", l.n, p)
		}
		fmt.Printf("life %3d/%d %-10s %d faults: %d leaked, %d lost at its end\n", l.n, len(lives), kind(l), len(l.faults), l.leaked, l.lost)
	}

	nHit := 0
	for _, m := range hits {
		nHit += len(m)
	}
	fmt.Printf("faults: boundaries hit (operation | driver killed | trials): %d of %d\n", nHit, len(bounds))
	for _, op := range h.ops {
		var labels []string
		for l := range hits[op] {
			labels = append(labels, l)
		}
		sort.Slice(labels, func(i, j int) bool { return labelKey(labels[i]) < labelKey(labels[j]) })
		for _, l := range labels {
			fmt.Printf("faults: | %s | %s | %d |\n", op, l, hits[op][l])
		}
	}
	if left := h.carveLVs(); len(left) > 0 {
		leaked += len(left)
		t.Errorf("carve volumes left in %s after all trials: %v", pl, left)
	}
	fmt.Printf("faults: %d faults fired, %d driver restarts, %d calls abandoned and torn down instead of retried, "+
		"%d trials or lives with other problems, %.0fs (calls %.0fs, restarts %.0fs, audits %.0fs)\n",
		fired, h.restarts, h.abandoned, bad, time.Since(start).Seconds(),
		h.tCalls.Seconds(), h.tRestarts.Seconds(), h.tAudits.Seconds())
	if pl.thin() {
		fmt.Printf("faults: %d kills left a copy carve.restoring=pending, which the retry removed and made again\n", h.pending)
	}
	fmt.Printf("faults: %d trials, %d leaked, %d lost (%s)\n", h.done, leaked, lost, pl)
	if h.done != trials {
		t.Errorf("%d of the %d planned trials ran", h.done, trials)
	}
	if leaked > 0 || lost > 0 {
		t.Errorf("%d leaked, %d lost (see the trial lines above)", leaked, lost)
	}
	if fired < trials*9/10 {
		t.Errorf("only %d of %d faults fired: the calibration no longer matches the calls carve makes", fired, trials)
	}
}

// boundaries are the faults of an op that makes calls tool calls: one per
// call and mode. With once, each boundary between two calls counts once:
// nothing but the driver's own memory changes between the end of call n-1
// and the start of call n (a standalone node writes nowhere else), so a kill
// before call n leaves what a kill after call n-1 does, and when the modes
// have "after" only call 1 gets a "before" (the thin lives, whose calls are
// many and slow, use it).
func boundaries(op string, calls int, modes []string, once bool) []boundary {
	var bs []boundary
	for n := 1; n <= calls; n++ {
		for _, m := range modes {
			if once && m == "before" && n > 1 && slices.Contains(modes, "after") {
				continue
			}
			bs = append(bs, boundary{op, n, m})
		}
	}
	return bs
}

// plan picks the trials' faults: the ops take turns (in a random order each
// turn), so that the lives fill up, and each op walks through its own
// boundaries in a random order, all of them before any repeats. With
// h.coverAll an op that has been through all its boundaries sits out its
// turns until every other op has too, so that as many trials as there are
// boundaries hit each of them once.
func (h *harness) plan(perOp map[string][]boundary, trials int) []boundary {
	next := map[string]int{}
	rounds := func(op string) int { return next[op] / len(perOp[op]) }
	var plan []boundary
	for len(plan) < trials {
		turn := append([]string(nil), h.ops...)
		h.rng.Shuffle(len(turn), func(i, j int) { turn[i], turn[j] = turn[j], turn[i] })
		for _, op := range turn {
			bs := perOp[op]
			if len(plan) == trials || len(bs) == 0 {
				continue
			}
			if h.coverAll && slices.ContainsFunc(h.ops, func(o string) bool { return len(perOp[o]) > 0 && rounds(o) < rounds(op) }) {
				continue
			}
			if next[op]%len(bs) == 0 {
				h.rng.Shuffle(len(bs), func(i, j int) { bs[i], bs[j] = bs[j], bs[i] })
			}
			plan = append(plan, bs[next[op]%len(bs)])
			next[op]++
		}
	}
	return plan
}

// readOnly are the calls that change nothing (their labels).
var readOnly = map[string]bool{"lvm lvs": true, "lvm vgs": true, "blkid": true}

// changes reports whether a kill at b can leave something other than a kill
// before the op's first call does: b is that kill, or comes during or after a
// call that writes (not after an lvs, which changes nothing).
func changes(b boundary, labels []string) bool {
	if b.when != "after" || b.n > len(labels) {
		return true
	}
	return !readOnly[labels[b.n-1]]
}

// planChangesFirst plans as plan with h.coverAll, but first the boundaries
// where something changed (changes), then the kills after read-only calls,
// then repeats: trials as many as the first hit every such boundary once.
func (h *harness) planChangesFirst(perOp map[string][]boundary, trials int) []boundary {
	first, then := map[string][]boundary{}, map[string][]boundary{}
	nFirst, nThen := 0, 0
	for op, bs := range perOp {
		for _, b := range bs {
			if changes(b, h.labels[op]) {
				first[op] = append(first[op], b)
				nFirst++
			} else {
				then[op] = append(then[op], b)
				nThen++
			}
		}
	}
	plan := h.plan(first, min(trials, nFirst))
	if n := min(trials-len(plan), nThen); n > 0 {
		plan = append(plan, h.plan(then, n)...)
	}
	if n := trials - len(plan); n > 0 {
		plan = append(plan, h.plan(perOp, n)...)
	}
	return plan
}

func kind(l *life) string {
	switch {
	case l.thin:
		return "snap+clone"
	case l.inline:
		return "inline"
	case l.expand:
		return "pv+expand"
	}
	return "pv"
}

// packLives groups the planned faults into volume lives: each life takes the
// first fault left and then, in plan order, every later one of its kind
// (inline or persistent) on an op it has no fault on yet.
func (h *harness) packLives(plan []boundary, first int) []*life {
	var lives []*life
	used := make([]bool, len(plan))
	for i, b := range plan {
		if used[i] {
			continue
		}
		l := &life{n: first + len(lives), inline: isInlineOp(b.op), faults: map[string]*trial{}}
		l.tag = fmt.Sprintf("l%03d", l.n)
		for j := i; j < len(plan); j++ {
			if c := plan[j]; !used[j] && isInlineOp(c.op) == l.inline && l.faults[c.op] == nil {
				tr := &trial{fault: c, abandon: abandonable(c.op) && h.rng.IntN(3) == 0}
				if c.when == "during" {
					tr.delay = time.Duration(h.rng.Int64N(int64(maxDelay/time.Millisecond))) * time.Millisecond
				}
				l.faults[c.op] = tr
				used[j] = true
			}
		}
		// Expansion is part of every fourth persistent life, and of those with a fault on it.
		l.expand = !l.inline && (l.faults[opControllerGrow] != nil || l.faults[opNodeGrow] != nil || h.rng.IntN(4) == 0) &&
			h.pool.canExpand() && !h.pool.thin()
		lives = append(lives, l)
	}
	return lives
}

// installShim puts the shim binary and a symlink per tool into a directory
// that start puts first in the driver's PATH.
func (h *harness) installShim() {
	t := h.t
	h.shimDir = filepath.Join(t.TempDir(), "shim")
	if err := os.Mkdir(h.shimDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(h.shimDir, "faultshim")
	if src := os.Getenv("CARVE_FAULTS_SHIM"); src != "" {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatalf("CARVE_FAULTS_SHIM: %v", err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		_, file, _, _ := runtime.Caller(0)
		cmd := osexec.Command("go", "build", "-o", dst, "./faultshim")
		cmd.Dir = filepath.Dir(file)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build faultshim (or set CARVE_FAULTS_SHIM): %v\n%s", err, out)
		}
	}
	for _, tool := range shimTools {
		if err := os.Symlink("faultshim", filepath.Join(h.shimDir, tool)); err != nil {
			t.Fatal(err)
		}
	}
}

// start runs a new carve-csi --mode=node with the shim first in its PATH.
func (h *harness) start() {
	t := h.t
	h.arm(0, 0, "before", 0) // nothing counts while it starts
	p := driver.Start(t, []string{"PATH=" + h.shimDir + ":" + os.Getenv("PATH")},
		"--mode=node", "--standalone", "--nodeid="+nodeID, "--drivername="+driverName,
		h.pool.flag(), "--kubelet-dir="+h.kubelet, "--v=2")
	pid, err := pidOf(p.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if h.conn != nil {
		h.conn.Close()
	}
	conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client for %s: %v", p.Socket, err)
	}
	h.proc, h.pid, h.conn = p, pid, conn
	h.ctrl, h.node = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	t.Cleanup(func() { conn.Close() })
}

// pidOf finds the carve-csi serving socket (test/driver does not export it).
func pidOf(socket string) (int, error) {
	want := "--endpoint=unix://" + socket
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if a == want {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no process with %s", want)
}

// arm writes the shim's configuration and empties its call log: calls from
// pid are counted, and the kill-th (0: none) kills it.
func (h *harness) arm(pid, kill int, when string, delay time.Duration) {
	conf := fmt.Sprintf("pid=%d kill=%d when=%s delay=%d\n", pid, kill, when, delay.Milliseconds())
	if err := os.WriteFile(filepath.Join(h.shimDir, "fault.conf"), []byte(conf), 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(h.shimDir, "calls.log"), 0); err != nil && !os.IsNotExist(err) {
		h.t.Fatal(err)
	}
}

// callLog returns the calls the shim counted since arm, and the one that
// killed (with " (tool killed)" or " (tool done first)" for a "during" kill).
func (h *harness) callLog() (lines []string, fired string) {
	b, err := os.ReadFile(filepath.Join(h.shimDir, "calls.log"))
	if err != nil && !os.IsNotExist(err) {
		h.t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		switch {
		case strings.HasSuffix(l, " !tool-killed"):
			fired += " (tool killed)"
			continue
		case strings.HasSuffix(l, " !tool-finished"):
			fired += " (tool done first)"
			continue
		}
		lines = append(lines, l)
		if strings.Contains(l, " !kill-") {
			fired = l
		}
	}
	return lines, fired
}

// call runs one CSI call of op; with a fault of the life on op armed, the
// shim may kill the driver during it. Then the driver is restarted and fn
// retried, as kubelet or a sidecar would, until it succeeds, and the node is
// audited. fn updates the life's volumes when its call succeeds.
func (h *harness) call(l *life, op string, fn func(context.Context) error) error {
	tr := l.faults[op]
	if tr != nil {
		h.arm(h.pid, tr.fault.n, tr.fault.when, tr.delay)
	} else {
		h.arm(h.pid, 0, "before", 0)
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	err := fn(ctx)
	cancel()
	h.tCalls += time.Since(t0)
	lines, fired := h.callLog()
	h.arm(0, 0, "before", 0)
	if fired == "" {
		if err == nil && tr == nil && len(lines) >= h.calls[op] {
			h.calls[op] = len(lines)
			if l.faults == nil { // calibration
				h.labels[op] = callLabels(lines)
			}
		}
		// After an abandoned call the teardown may have less to do (nothing
		// mounted, the LV already gone): such a fault is not a trial here
		// and goes to a new life.
		if tr != nil && !l.abandoned {
			h.report(l, tr, t0, "fault did not fire")
		}
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		return nil
	}
	tr.fired = fired
	if err == nil {
		tr.problem("%s succeeded although the shim killed the driver (%s)", op, fired)
	}
	t1 := time.Now()
	h.proc.Stop(syscall.SIGKILL) // already dead: this waits for it
	h.restarts++
	h.start()
	h.tRestarts += time.Since(t1)
	if h.pool.thin() {
		h.notePending(tr)
	}
	if tr.abandon {
		h.abandoned++
		l.abandoned = true
		h.report(l, tr, t0, "killed "+firedLabel(fired)+", restarted, abandoned (torn down, audited at the end of the life)")
		return errAbandoned
	}
	for attempt := 1; ; attempt++ {
		t2 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		err = fn(ctx)
		cancel()
		h.tCalls += time.Since(t2)
		if err == nil {
			tr.retries = attempt
			break
		}
		if attempt == maxRetries {
			err = fmt.Errorf("%s after the restart: still failing after %d retries: %w", op, attempt, err)
			tr.problem("%v", err)
			h.report(l, tr, t0, "killed "+firedLabel(fired)+", restarted, retries failed")
			return err
		}
		h.t.Logf("life %d: %s retry %d: %v", l.n, op, attempt, err)
		time.Sleep(time.Duration(attempt) * 500 * time.Millisecond)
	}
	h.audit(l, &tr.tally, "after the recovery of "+op)
	outcome := fmt.Sprintf("killed %s, restarted, retried %dx", firedLabel(fired), tr.retries)
	if tr.pending {
		outcome = fmt.Sprintf("killed %s, left a copy carve.restoring=pending, restarted, retried %dx", firedLabel(fired), tr.retries)
	}
	h.report(l, tr, t0, outcome)
	return nil
}

// report prints one trial's line.
func (h *harness) report(l *life, tr *trial, t0 time.Time, outcome string) {
	h.done++
	tr.ran = true
	fmt.Printf("trial %3d (life %d) %-28s %-6s call %d: %s; %d leaked, %d lost (%.1fs)\n",
		h.done, l.n, tr.fault.op, tr.fault.when, tr.fault.n, outcome, tr.leaked, tr.lost, time.Since(t0).Seconds())
	for _, p := range tr.problems {
		fmt.Printf("    trial %d: %s\n", h.done, p)
		h.t.Errorf("trial %d (%v): %s", h.done, tr.fault, p)
	}
}

// runLife runs one volume's life with its faults, audits that nothing of it
// is left, and scrubs whatever is.
func (h *harness) runLife(l *life) {
	var err error
	l.thin = h.pool.thin()
	switch {
	case h.pool.thin():
		err = h.thinLife(l)
	case l.inline:
		err = h.inlineLife(l)
	default:
		err = h.persistentLife(l)
	}
	if err != nil {
		// The life fails; what it still holds is scrubbed, not counted.
		l.problem("%v", err)
	}
	if h.audit(l, &l.tally, "at the end of the life") > 0 {
		h.scrub(l)
	}
}

func mountCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func (h *harness) mkdir(p string) string {
	if err := os.MkdirAll(p, 0o750); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// podTarget is a pod's target path; kubelet creates its parent, carve the rest.
func (h *harness) podTarget(tag, vol string) string {
	return filepath.Join(h.mkdir(filepath.Join(h.kubelet, "pods", tag+"-pod", "volumes", "kubernetes.io~csi", vol)), "mount")
}

func (h *harness) persistentLife(l *life) error {
	v := &vol{name: "faults-" + l.tag + "-pv"}
	v.staging = h.mkdir(filepath.Join(h.kubelet, "plugins", "kubernetes.io", "csi", driverName, l.tag, "globalmount"))
	v.target = h.podTarget(l.tag, "pv")
	l.vols = append(l.vols, v)
	steps := []struct {
		op string
		fn func(context.Context) error
	}{
		{opCreate, func(ctx context.Context) error {
			resp, err := h.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: v.name,
				CapacityRange:      &csi.CapacityRange{RequiredBytes: volSize},
				VolumeCapabilities: []*csi.VolumeCapability{mountCap()}})
			if err == nil {
				v.id, v.created = resp.GetVolume().GetVolumeId(), true
			}
			return err
		}},
		{opStage, func(ctx context.Context) error {
			_, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id,
				StagingTargetPath: v.staging, VolumeCapability: mountCap()})
			if err == nil {
				v.staged = true
			}
			return err
		}},
		{opPublish, func(ctx context.Context) error {
			_, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id,
				StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: mountCap()})
			if err == nil {
				v.publ = true
			}
			return err
		}},
	}
	for _, s := range steps {
		err := h.call(l, s.op, s.fn)
		if err == nil && s.op == opCreate {
			h.checkBlank(&l.tally, v)
		}
		if errors.Is(err, errAbandoned) {
			v.uncertain = true
			v.staged = v.staged || s.op == opStage
			v.publ = v.publ || s.op == opPublish
			return h.teardown(l, v)
		}
		if err != nil {
			return err
		}
	}
	h.checkFresh(&l.tally, v)
	if err := h.writeData(v); err != nil {
		return err
	}
	if l.expand {
		if err := h.call(l, opControllerGrow, func(ctx context.Context) error {
			resp, err := h.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.id,
				CapacityRange: &csi.CapacityRange{RequiredBytes: grownSize}, VolumeCapability: mountCap()})
			if err == nil && (resp.GetCapacityBytes() < grownSize || !resp.GetNodeExpansionRequired()) {
				return fmt.Errorf("ControllerExpandVolume answered %v", resp)
			}
			return err
		}); err != nil {
			return err
		}
		if err := h.call(l, opNodeGrow, func(ctx context.Context) error {
			_, err := h.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.id,
				VolumePath: v.target, StagingTargetPath: v.staging, VolumeCapability: mountCap(),
				CapacityRange: &csi.CapacityRange{RequiredBytes: grownSize}})
			return err
		}); err != nil {
			return err
		}
		var st unix.Statfs_t
		if err := unix.Statfs(v.target, &st); err != nil {
			return fmt.Errorf("statfs %s: %w", v.target, err)
		}
		// ext4 keeps some of the device for itself; 16 MiB stays below 24.
		if total := int64(st.Blocks) * st.Bsize; total < 24*mib {
			l.problem("after NodeExpandVolume the filesystem has %d bytes, want >= %d", total, 24*mib)
		}
		h.checkData(&l.tally, v, "after the expansion")
	}
	return h.teardown(l, v)
}

// teardown unpublishes, unstages and deletes a persistent volume.
func (h *harness) teardown(l *life, v *vol) error {
	for _, s := range []struct {
		op string
		fn func(context.Context) error
	}{
		{opUnpublish, func(ctx context.Context) error {
			_, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target})
			if err == nil {
				v.publ = false
			}
			return err
		}},
		{opUnstage, func(ctx context.Context) error {
			_, err := h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
			if err == nil {
				v.staged = false
			}
			return err
		}},
		{opDelete, func(ctx context.Context) error {
			_, err := h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
			if err == nil {
				v.created = false
			}
			return err
		}},
	} {
		if err := h.call(l, s.op, s.fn); err != nil {
			return err
		}
	}
	return nil
}

func (h *harness) inlineLife(l *life) error {
	// kubelet's handle for an inline volume: csi-<sha256 of pod uid, volume>.
	v := &vol{name: "csi-faults-" + l.tag + "-" + strconv.FormatUint(h.rng.Uint64(), 16)}
	v.target = h.podTarget(l.tag, "inline")
	l.vols = append(l.vols, v)
	vctx := map[string]string{
		"csi.storage.k8s.io/ephemeral":     "true",
		"csi.storage.k8s.io/pod.name":      l.tag + "-pod",
		"csi.storage.k8s.io/pod.namespace": "default",
		"size":                             strconv.FormatInt(volSize/mib, 10) + "Mi",
	}
	err := h.call(l, opInlinePublish, func(ctx context.Context) error {
		_, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.name,
			TargetPath: v.target, VolumeCapability: mountCap(), VolumeContext: vctx})
		if err == nil {
			v.created, v.publ = true, true
		}
		return err
	})
	switch {
	case errors.Is(err, errAbandoned):
		v.created, v.publ, v.uncertain = true, true, true
	case err != nil:
		return err
	default:
		h.checkFresh(&l.tally, v)
		if err := h.writeData(v); err != nil {
			return err
		}
	}
	return h.call(l, opInlineUnpublish, func(ctx context.Context) error {
		_, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.name, TargetPath: v.target})
		if err == nil {
			v.publ, v.created = false, false
		}
		return err
	})
}

// writeData writes 256 KiB of random data through the pod's target and syncs it.
func (h *harness) writeData(v *vol) error {
	data := make([]byte, 256<<10)
	for i := 0; i < len(data); i += 8 {
		u := h.rng.Uint64()
		for j := 0; j < 8; j++ {
			data[i+j] = byte(u >> (8 * j))
		}
	}
	f, err := os.OpenFile(filepath.Join(v.target, "data"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write data: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write data to %s: %w", v.target, err)
	}
	v.data = data
	return nil
}

// checkBlank checks that a just created volume's device holds no filesystem
// or other signature (carve wipes a new volume: lvcreate -W y, the pmem
// backend's wipe), which the publish's checkFresh could miss when the
// earlier volume at that place never got a data file. A device that is not
// there (an inactive LV) is left to the later checks.
func (h *harness) checkBlank(tr *tally, v *vol) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cvs, _, err := h.carveVolumes(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, c := range cvs {
		if !c.owns(h.pool.pmem(), v) || c.dev == "" {
			continue
		}
		if _, err := os.Stat(c.dev); err != nil {
			continue
		}
		// blkid -p exits 2 when it finds nothing.
		out, err := h.runner.Run(ctx, "blkid", "-p", "-o", "export", c.dev)
		if err == nil && len(bytes.TrimSpace(out)) > 0 {
			tr.lost++
			tr.problem("stale data: the new volume %s (%s) already holds %s", v.name, c.label,
				strings.Join(strings.Fields(string(out)), " "))
		}
	}
}

// checkFresh checks that a newly created and published volume holds nothing
// but what mkfs makes: every life writes a data file and deletes its volume,
// and the next one is created at the same place of the pool (same size, the
// allocators fit first), so a data file here is an earlier volume's, whose
// filesystem survived into the new volume and was mounted instead of a new
// one (stale data handed to another volume).
//
// The data file shows only if the earlier volume got as far as writing it, so
// the filesystem's UUID is also compared with those of all earlier volumes: a
// new volume must have been formatted anew.
func (h *harness) checkFresh(tr *tally, v *vol) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cvs, _, err := h.carveVolumes(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	if h.fsSeen == nil {
		h.fsSeen = map[string]string{}
	}
	for _, c := range cvs {
		if !c.owns(h.pool.pmem(), v) || c.dev == "" {
			continue
		}
		out, err := h.runner.Run(ctx, "blkid", "-p", "-o", "value", "-s", "UUID", c.dev)
		uuid := strings.TrimSpace(string(out))
		if err != nil || uuid == "" {
			tr.problem("blkid %s of the new volume %s: %q, %v", c.dev, v.name, out, err)
			continue
		}
		if prev, ok := h.fsSeen[uuid]; ok && prev != v.name {
			tr.lost++
			tr.problem("stale filesystem: the new volume %s (%s) came up with filesystem %s of the earlier volume %s instead of a new one", v.name, c.label, uuid, prev)
		}
		h.fsSeen[uuid] = v.name
	}
	ents, err := os.ReadDir(v.target)
	if err != nil {
		tr.problem("reading the new volume %s at %s: %v", v.name, v.target, err)
		return
	}
	for _, e := range ents {
		if e.Name() != "lost+found" {
			tr.lost++
			tr.problem("stale data: the new volume %s shows %s of an earlier volume in %s", v.name, e.Name(), v.target)
		}
	}
}

// checkData reads the data file back through the target, or the staging
// mount when the volume is staged but not published; a difference is lost data.
func (h *harness) checkData(tr *tally, v *vol, when string) {
	var dir string
	switch {
	case v.data == nil:
		return
	case v.publ:
		dir = v.target
	case v.staged:
		dir = v.staging
	default:
		return
	}
	got, err := os.ReadFile(filepath.Join(dir, "data"))
	if err != nil || !bytes.Equal(got, v.data) {
		tr.lost++
		tr.problem("lost %s: data file in %s %s: %d bytes read (want %d identical), %v", when, dir, v.name, len(got), len(v.data), err)
	}
}

// carveLVs lists carve's volumes in the pool (LVs, namespaces) with the
// test's own tools.
func (h *harness) carveLVs() []string {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	vols, _, err := h.carveVolumes(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var names []string
	for _, c := range vols {
		names = append(names, c.label)
	}
	return names
}

// audit counts into tr what is leaked and lost now, given what the life
// holds, and returns how many carve LVs and kubelet mounts it saw.
func (h *harness) audit(l *life, tr *tally, when string) (seen int) {
	t0 := time.Now()
	defer func() { h.tAudits += time.Since(t0) }()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cvs, allLVs, err := h.carveVolumes(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		h.t.Fatal(err)
	}
	dms := h.dmDevices()
	suspended := map[string]bool{}
	for _, d := range dms {
		suspended[d.lv] = d.suspended

	}
	held := map[string]*vol{}
	for _, v := range l.vols {
		if v.created {
			held[v.name] = v
		}
	}
	lvOf := map[string]carveVol{} // CSI name -> LV or namespace
	for _, c := range cvs {
		seen++
		var owner *vol
		for _, v := range held {
			if c.owns(h.pool.pmem(), v) {
				owner = v
			}
		}
		if owner == nil {
			tr.leaked++
			tr.problem("leaked %s: %s is owned by no volume or pod", when, c.label)
			continue
		}
		lvOf[owner.name] = c
	}
	for _, v := range l.vols {
		if !v.created {
			continue
		}
		lv, ok := lvOf[v.name]
		if !ok && v.uncertain && v.id == "" {
			continue // an interrupted inline publish may have left nothing
		}
		if !ok {
			tr.lost++
			tr.problem("lost %s: volume %s is held (staged %v, published %v) but its LV is gone", when, v.name, v.staged, v.publ)
			continue
		}
		if suspended[lv.obj] {
			// Reading its data would hang; the scrub resumes it.
			tr.lost++
			tr.problem("lost %s: volume %s: its device-mapper device is left suspended, so its I/O blocks", when, v.name)
			continue
		}
		if h.pool.thin() {
			h.checkThin(tr, v, lv, when)
		}
		if v.uncertain {
			continue // owned, but whether it is mounted is not known
		}
		dev := lv.dev
		if dev == "" {
			tr.lost++
			tr.problem("lost %s: volume %s: %s has no block device", when, v.name, lv.label)
			continue
		}
		for _, m := range []struct {
			on   bool
			path string
		}{{v.staged, v.staging}, {v.publ, v.target}} {
			if m.on && !mountedFrom(mounts, m.path, dev) {
				tr.lost++
				tr.problem("lost %s: volume %s: %s is not a mount of %s", when, v.name, m.path, dev)
			}
		}
		h.checkData(tr, v, when)
	}
	for _, m := range mounts {
		if !strings.HasPrefix(m.MountPoint, h.kubelet+"/") {
			continue
		}
		seen++
		owned := false
		for _, v := range l.vols {
			owned = owned || (v.staged && m.MountPoint == v.staging) || (v.publ && m.MountPoint == v.target)
		}
		if !owned {
			tr.leaked++
			tr.problem("leaked %s: stray mount of %s at %s", when, m.Source, m.MountPoint)
		}
	}
	for _, d := range dms {
		if !allLVs[d.lv] {
			seen++
			tr.leaked++
			tr.problem("leaked %s: device-mapper device %s has no LV", when, d.name)
		}
		if d.suspended {
			h.resume(d.name)
		}
	}
	return seen
}

// dmDev is a device-mapper device of the VG.
type dmDev struct {
	name, lv  string
	suspended bool // I/O to it blocks until it is resumed
}

func (h *harness) dmDevices() []dmDev {
	if h.pool.pmem() {
		return nil // a namespace is no device-mapper device
	}
	prefix := strings.ReplaceAll(h.pool.vg, "-", "--") + "-"
	names, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	var out []dmDev
	for _, f := range names {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		d := dmDev{name: strings.TrimSpace(string(b))}
		if !strings.HasPrefix(d.name, prefix) {
			continue
		}
		d.lv = strings.ReplaceAll(strings.TrimPrefix(d.name, prefix), "--", "-")
		if tp := h.pool.thinPool; h.pool.thin() && (d.lv == tp || strings.HasPrefix(d.lv, tp+"_") || strings.HasPrefix(d.lv, tp+"-")) {
			continue // the thin pool's own devices (_tdata, _tmeta, -tpool), which lvs does not list
		}
		sus, _ := os.ReadFile(filepath.Join(filepath.Dir(f), "suspended"))
		d.suspended = strings.TrimSpace(string(sus)) == "1"
		out = append(out, d)
	}
	return out
}

// mountedFrom reports whether path is mounted from the block device dev.
func mountedFrom(mounts []mount.MountInfo, path, dev string) bool {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return false
	}
	for _, m := range mounts {
		if m.MountPoint == path && uint32(m.Major) == unix.Major(st.Rdev) && uint32(m.Minor) == unix.Minor(st.Rdev) {
			return true
		}
	}
	return false
}

func hasTag(tags, tag string) bool {
	for _, t := range strings.Split(tags, ",") {
		if t == tag {
			return true
		}
	}
	return false
}

func csiName(tags string) string {
	for _, t := range strings.Split(tags, ",") {
		if v, ok := strings.CutPrefix(t, "carve.name="); ok {
			if b, err := base64.RawURLEncoding.DecodeString(v); err == nil {
				return string(b)
			}
			return "<undecodable " + v + ">"
		}
	}
	return ""
}

// resume resumes a suspended device the audit counted, so that the life
// can go on instead of blocking on it.
func (h *harness) resume(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := h.runner.Run(ctx, "dmsetup", "resume", name); err != nil {
		h.t.Errorf("resume %s: %v", name, err)
	}
}

// scrub removes what the life left (mounts, LVs), after the audit counted
// it, so that the next life starts clean.
func (h *harness) scrub(l *life) {
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		h.t.Fatal(err)
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].MountPoint) > len(mounts[j].MountPoint) })
	for _, m := range mounts {
		if strings.HasPrefix(m.MountPoint, h.kubelet+"/") {
			if err := unix.Unmount(m.MountPoint, unix.MNT_DETACH); err != nil {
				h.t.Logf("scrub: umount %s: %v", m.MountPoint, err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cvs, _, err := h.carveVolumes(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, c := range cvs {
		if err := h.removeVolume(ctx, c); err != nil {
			h.t.Errorf("scrub after life %d: %s: %v", l.n, c.label, err)
		}
	}
	_, have, err := h.carveVolumes(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, d := range h.dmDevices() {
		if !have[d.lv] {
			if _, err := h.runner.Run(ctx, "dmsetup", "remove", "-f", d.name); err != nil {
				h.t.Errorf("scrub after life %d: %v", l.n, err)
			}
		}
	}
}

// callLabels names each counted call ("lvm lvcreate", "mkfs.ext4", ...).
func callLabels(lines []string) []string {
	var out []string
	for _, l := range lines {
		out = append(out, toolLabel(strings.Fields(l)[1:]))
	}
	return out
}

func toolLabel(f []string) string {
	if len(f) == 0 {
		return "?"
	}
	switch f[0] {
	case "lvm":
		if len(f) > 1 {
			return "lvm " + f[1]
		}
	case "mount":
		for _, a := range f[1:] {
			if strings.Contains(a, "remount") {
				return "mount remount"
			}
			if strings.Contains(a, "bind") {
				return "mount bind"
			}
		}
	}
	return f[0]
}

// firedLabel turns the shim's line "<n> <tool> <args> !kill-<when>[ (...)]"
// into "<when> #<n> <tool>[ (...)]".
func firedLabel(line string) string {
	line, note, _ := strings.Cut(line, " (")
	if note != "" {
		note = " (" + note
	}
	f := strings.Fields(line)
	when := strings.TrimPrefix(f[len(f)-1], "!kill-")
	return fmt.Sprintf("%s #%s %s%s", when, f[0], toolLabel(f[1:len(f)-1]), note)
}

// labelKey sorts labels by call number, then before/after.
func labelKey(l string) string {
	f := strings.Fields(l)
	n, _ := strconv.Atoi(strings.TrimPrefix(f[1], "#"))
	return fmt.Sprintf("%04d %s %s", n, map[string]string{"before": "0", "during": "1", "after": "2"}[f[0]], l)
}
