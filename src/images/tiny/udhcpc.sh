#!/bin/sh
# udhcpc event script of the tiny guest: applies a DHCP lease to $interface.
# udhcpc passes: $1 = deconfig | bound | renew | leasefail | nak, and $ip, $mask (prefix
# length), $router, $dns in the environment.
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound|renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	if [ -n "$router" ]; then
		ip route del default dev "$interface" 2>/dev/null
		set -- $router
		ip route add default via "$1" dev "$interface"
	fi
	if [ -n "$dns" ]; then
		: > /etc/resolv.conf
		for server in $dns; do echo "nameserver $server" >> /etc/resolv.conf; done
	fi
	;;
esac
exit 0
