#!/bin/sh
# Runs INSIDE the VM rig (hack/vm) for make demo: the inline-volume part on
# the guest's blank virtio disk, with the guest kernel's device-mapper.
set -u
cp /share/carve-csi /share/inline /tmp/ || { echo "demo-guest: binaries missing in /share"; exit 2; }
exec /tmp/inline --carve=/tmp/carve-csi --device=/dev/vda
