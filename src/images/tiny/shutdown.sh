#!/bin/sh
# Run by busybox init before it powers off or reboots: stop the workload, flush the disks.
nubis-tool dirty 0 0 > /dev/null 2>&1
sync
umount -a -r > /dev/null 2>&1
