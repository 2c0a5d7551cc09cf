#!/bin/sh
# deploy/image/prune.sh ROOT: removes from carve's runtime image (root filesystem at ROOT) what
# carve never runs. Shared by the Dockerfile and the offline build (hack/image/build.sh), like
# packages.txt, so the two images stay the same. A smaller image is also a faster one to import:
# on the emulated test node `ctr images import` costs about 3 s per MB (issue 11's rig).
#
# Files owned by packages are removed without dpkg: nothing installs packages into this image at
# run time. hack/image/build.sh checks afterwards that every program carve runs still finds all
# of its shared libraries.
set -eu
r="${1:?usage: prune.sh ROOT}"
[ -d "$r/usr" ] || { echo "prune.sh: $r is not a root filesystem" >&2; exit 1; }

# What debian:bookworm-slim leaves out: documentation, man pages, locales.
rm -rf "$r"/usr/share/doc "$r"/usr/share/man "$r"/usr/share/info "$r"/usr/share/locale \
	"$r"/usr/share/lintian "$r"/usr/share/linda
# xfsprogs depends on python3 and libicu only for xfs_scrub and xfs_scrub_all (online checking
# of a mounted XFS), which carve never runs: about 60 MB of the image's 170.
rm -rf "$r"/usr/sbin/xfs_scrub "$r"/usr/sbin/xfs_scrub_all "$r"/usr/lib/python3 "$r"/usr/lib/python3.* \
	"$r"/usr/bin/python3 "$r"/usr/bin/python3.* "$r"/usr/share/python3 \
	"$r"/usr/lib/x86_64-linux-gnu/libicu* "$r"/usr/lib/x86_64-linux-gnu/libpython3*
# Package manager caches and logs.
rm -rf "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* "$r"/var/cache/debconf/*-old "$r"/var/log/*
mkdir -p "$r/var/lib/apt/lists/partial"
