#!/bin/sh
# /init of the Nubis "tiny" guest (built by src/images/build-tiny.ts).
#
# THE GUEST CONTRACT - the rest of Nubis relies on it exactly; src/images/README-guest.md
# says the same at more length. Change both together, never one.
#
# Kernel command line (set by Nubis with QEMU -kernel/-initrd/-append):
#   console=tty0 console=ttyS0 nubis.name=<vm name> nubis.net=<nic0>[;<nic1>...] [nubis.dirty=<rate_mb>:<wss_mb>]
#   A NIC spec is "dhcp" or "<ip>/<prefix>[,<gateway>]", applied to eth0, eth1, ... in order.
#   No nubis.net: eth0 (if present) runs DHCP in the background without delaying readiness.
#   nubis.dirty starts the memory-dirtying workload at boot (as "nubis-tool dirty R W").
# Readiness: once modules are loaded, /dev /proc /sys mounted, the network configured and the
#   HTTP server listening, exactly one line goes to the console:
#     NUBIS-READY name=<name> ips=<comma-separated IPv4 addresses, or none>
# HTTP on port 80:
#   GET /                                          200 "<name> requests=<n>" (n counts from 1)
#   GET /cgi-bin/dirty?rate_mb=R&wss_mb=W          {"running":true,"rateMb":R,"wssMb":W}
#       (rate_mb=0 stops; no parameters reports the state)
#   GET /cgi-bin/disk?op=write&dev=vdb&mb=N&seed=S {"ok":true,"blocks":B}
#   GET /cgi-bin/disk?op=verify&dev=vdb&mb=N&seed=S {"ok":true,"blocks":B} or
#       {"ok":false,"blocks":B,"badBlocks":[first 16],"badCount":K}
#   Bad parameters answer 400 {"ok":false,"error":"..."}.
# Shell: nubis-tool dirty R W | disk-write DEV N S | disk-verify DEV N S (exit 0 only if intact).
# ACPI power button (QEMU system_powerdown) powers off cleanly; "reboot" reboots.
# vCPUs hot-added by the host (QMP device_add) come online at once: mdev, as a netlink daemon,
#   runs /etc/nubis/cpu-online.sh for each (as udev's usual rule does on a distribution).
# After readiness a root shell respawns on the console (ttyS0, the last console= named) and
# another on the screen (tty1, shown by the VGA display).

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
# Words from the kernel command line are expanded below: never as file name patterns.
set -f
umask 022

log() { echo "nubis-init: $*"; }

mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm /run/nubis /tmp /var/log
mount -t devpts devpts /dev/pts

# A vCPU the host hot-adds arrives offline: mdev (etc/mdev.conf) onlines each as the kernel
# announces it, and any added before mdev listened is onlined here.
mdev -d
for online in /sys/devices/system/cpu/cpu*/online; do
	[ "$(cat "$online")" = 0 ] && echo 1 > "$online"
done

name=tiny
net=
net_given=no
dirty=
for word in $(cat /proc/cmdline); do
	case "$word" in
	nubis.name=*) name=${word#nubis.name=} ;;
	nubis.net=*) net=${word#nubis.net=}; net_given=yes ;;
	nubis.dirty=*) dirty=${word#nubis.dirty=} ;;
	esac
done
echo "$name" > /run/nubis/name
hostname "$name"

# Order matters: each module needs the symbols of the ones before it (HOST-FACTS "Hypervisor").
while read -r module; do
	insmod "/lib/modules/$module.ko" || log "insmod $module failed"
done < /etc/nubis/modules
# Kernel chatter from here on would interleave with the readiness line and the shell.
echo 4 > /proc/sys/kernel/printk

ip link set lo up

# udhcpc forks into the background once it has a lease (or, with -b, after its tries fail) and
# then renews it; its script applies the lease.
dhcp() {
	udhcpc -i "$1" -s /etc/nubis/udhcpc.sh -x "hostname:$name" -t 5 -T 2 -A 5 -b \
		-p "/run/nubis/udhcpc.$1.pid" >> "/run/nubis/udhcpc.$1.log" 2>&1
}

if [ "$net_given" = yes ]; then
	index=0
	IFS=';'
	for spec in $net; do
		unset IFS
		dev=eth$index
		index=$((index + 1))
		if [ ! -e "/sys/class/net/$dev" ]; then
			log "nubis.net gives a spec for $dev ($spec), but there is no $dev"
			continue
		fi
		ip link set "$dev" up
		case "$spec" in
		dhcp) dhcp "$dev" ;;
		*/*)
			address=${spec%%,*}
			gateway=
			case "$spec" in *,*) gateway=${spec#*,} ;; esac
			ip addr add "$address" dev "$dev" || log "cannot set $address on $dev"
			if [ -n "$gateway" ]; then
				ip route add default via "$gateway" dev "$dev" || log "cannot route via $gateway on $dev"
			fi
			;;
		*) log "nubis.net spec '$spec' for $dev is neither dhcp nor <ip>/<prefix>[,<gateway>]" ;;
		esac
	done
	unset IFS
elif [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up
	dhcp eth0 &
fi

# The power button reaches user space through evdev; busybox acpid maps it to
# /etc/acpi/PWRF/00000080, which powers off.
acpid -c /etc/acpi -l /run/nubis/acpid.log -p /run/nubis/acpid.pid

httpd -p 80 -h /www
# "Listening" means the socket is in LISTEN state (0A) on port 80 (0050) in /proc/net/tcp.
tries=0
until grep -q '^ *[0-9]*: [0-9A-F]*:0050 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
	tries=$((tries + 1))
	if [ $tries -gt 250 ]; then
		log "httpd is not listening on port 80"
		break
	fi
	usleep 20000
done

if [ -n "$dirty" ]; then
	nubis-tool dirty "${dirty%%:*}" "${dirty#*:}" > /run/nubis/dirty-at-boot.json || log "nubis.dirty=$dirty did not start"
fi

ips=$(ip -4 -o addr show scope global | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | tr '\n' ',')
ips=${ips%,}
echo "NUBIS-READY name=$name ips=${ips:-none}"

# busybox init takes over as PID 1: it respawns the console shell and runs the power-off and
# reboot sequences (/etc/inittab).
exec /sbin/init
