#!/bin/sh
# busybox acpid runs this for the ACPI power button (QEMU system_powerdown): a clean power-off
# through busybox init, which runs /etc/nubis/shutdown.sh first.
exec /sbin/poweroff
