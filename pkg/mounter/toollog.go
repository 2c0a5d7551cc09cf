package mounter

import (
	"time"

	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// Every tool a Mounter runs is logged at --v=4 as "Tool ran" with its command
// line and duration (`--vmodule=toollog=4` shows only these), so an operator,
// and the node-path benchmark (issue 13), can tell a CSI call's own work from
// the time its tools took. blkid, mkfs, fsck and the resizers run through the
// exec interface; mount and umount through mount-utils, which starts them
// itself, so they are timed at that seam.

const toolLogLevel = 4

func logTool(argv []string, start time.Time, err error) {
	klog.V(toolLogLevel).InfoS("Tool ran", "cmd", argv, "duration", time.Since(start), "err", err)
}

// timedExec times the commands of an exec interface.
type timedExec struct{ utilexec.Interface }

func (e timedExec) Command(cmd string, args ...string) utilexec.Cmd {
	return &timedCmd{Cmd: e.Interface.Command(cmd, args...), argv: append([]string{cmd}, args...)}
}

// timedCmd logs the runs that wait for the tool to finish; Start and Wait
// pass through untimed (no Mounter path uses them).
type timedCmd struct {
	utilexec.Cmd
	argv []string
}

func (c *timedCmd) Run() error {
	start := time.Now()
	err := c.Cmd.Run()
	logTool(c.argv, start, err)
	return err
}

func (c *timedCmd) CombinedOutput() ([]byte, error) {
	start := time.Now()
	out, err := c.Cmd.CombinedOutput()
	logTool(c.argv, start, err)
	return out, err
}

func (c *timedCmd) Output() ([]byte, error) {
	start := time.Now()
	out, err := c.Cmd.Output()
	logTool(c.argv, start, err)
	return out, err
}

// timedMount times mount-utils' mount and umount runs. A bind mount with
// options is two mount runs in mount-utils (bind, then remount), logged as one.
type timedMount struct{ mount.Interface }

func (m timedMount) Mount(source, target, fstype string, options []string) error {
	start := time.Now()
	err := m.Interface.Mount(source, target, fstype, options)
	logTool(append([]string{"mount"}, mount.MakeMountArgs(source, target, fstype, options)...), start, err)
	return err
}

func (m timedMount) MountSensitive(source, target, fstype string, options, sensitiveOptions []string) error {
	start := time.Now()
	err := m.Interface.MountSensitive(source, target, fstype, options, sensitiveOptions)
	// The sensitive options are left out, as mount-utils' own log does.
	logTool(append([]string{"mount"}, mount.MakeMountArgs(source, target, fstype, options)...), start, err)
	return err
}

func (m timedMount) Unmount(target string) error {
	start := time.Now()
	err := m.Interface.Unmount(target)
	logTool([]string{"umount", target}, start, err)
	return err
}
