#!/bin/sh
# Run by mdev (/etc/mdev.conf) for a vCPU the kernel added: bring it online, as udev's usual
# rule does on a distribution. The host hot-adds vCPUs with QMP device_add.
case "$DEVPATH" in
/devices/system/cpu/cpu[0-9]*) ;;
*) exit 0 ;;
esac
online="/sys$DEVPATH/online"
if [ "$ACTION" = add ] && [ -f "$online" ] && [ "$(cat "$online")" = 0 ]; then
	echo 1 > "$online"
fi
