/*
 * nubis-launch: starts one of a VM's processes (QEMU, swtpm) as the VM's own unprivileged user.
 *
 *   nubis-launch --uid UID --gid GID [--group GID]... [--tap FD:NAME]... -- PROGRAM [ARG]...
 *
 * Run by the agent as root. In this order it:
 *   1. opens each tap device NAME (which must exist: the agent created it) through /dev/net/tun
 *      and puts it on descriptor FD, so that QEMU gets its taps as open files (`-netdev tap,fd=`)
 *      and needs no access to /dev/net/tun, which only root has;
 *   2. drops every privilege: supplementary groups replaced by the --group list, then the gid,
 *      then the uid (the order matters: without root no group can be changed), and checks that
 *      root cannot be regained;
 *   3. sets no_new_privs (nothing it runs can gain privileges, setuid programs included) and a
 *      umask of 077 (what it creates is its own);
 *   4. replaces itself with PROGRAM, which keeps its pid, its descriptors 0-2, the descriptors the
 *      agent handed it, and the taps.
 *
 * QEMU is started as the user itself rather than with `-run-with user=`: QEMU 10 switches user
 * after its seccomp filter denies privilege changes and dies of SIGSYS. Any failure prints one
 * line that names it and exits 127 before PROGRAM runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_GROUPS 8
#define MAX_TAPS 16
/* Ids of VMs' users are far above every system and login account (compute/vm-user.ts). */
#define LOWEST_ID 65536UL

static void fail(const char *what, const char *detail) {
  fprintf(stderr, "nubis-launch: %s%s%s%s%s\n", what, detail ? ": " : "", detail ? detail : "", errno ? ": " : "", errno ? strerror(errno) : "");
  exit(127);
}

/* A decimal id in [lowest, 2^31), nothing else. */
static unsigned long parse_id(const char *text, unsigned long lowest, const char *what) {
  char *end;
  errno = 0;
  if (!*text || *text == '-' || *text == '+') fail(what, text);
  unsigned long value = strtoul(text, &end, 10);
  if (errno || *end || value < lowest || value > 0x7fffffffUL) {
    errno = 0;
    fail(what, text);
  }
  return value;
}

/* Interface names as the agent makes them: 1-15 of [A-Za-z0-9_.-]. */
static int valid_tap_name(const char *name) {
  size_t length = strlen(name);
  if (length < 1 || length >= IFNAMSIZ) return 0;
  for (const char *c = name; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '.' || *c == '-')) return 0;
  return 1;
}

static int open_tap(const char *name) {
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) fail("cannot open /dev/net/tun", NULL);
  struct ifreq request;
  memset(&request, 0, sizeof request);
  strncpy(request.ifr_name, name, IFNAMSIZ - 1);
  /* IFF_VNET_HDR lets QEMU pass offloads; a kernel without it gets a plain tap. */
  request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(fd, TUNSETIFF, &request) < 0) {
    request.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (ioctl(fd, TUNSETIFF, &request) < 0) fail("cannot attach to the tap", name);
  }
  return fd;
}

int main(int argc, char **argv) {
  unsigned long uid = 0, gid = 0;
  gid_t groups[MAX_GROUPS];
  int group_count = 0, tap_count = 0, i = 1;
  struct { int target; const char *name; } taps[MAX_TAPS];

  for (; i < argc; i++) {
    const char *option = argv[i];
    if (!strcmp(option, "--")) { i++; break; }
    if (i + 1 >= argc) fail("option without a value", option);
    const char *value = argv[++i];
    if (!strcmp(option, "--uid")) uid = parse_id(value, LOWEST_ID, "--uid must be a VM's uid");
    else if (!strcmp(option, "--gid")) gid = parse_id(value, LOWEST_ID, "--gid must be a VM's gid");
    else if (!strcmp(option, "--group")) {
      if (group_count == MAX_GROUPS) fail("too many --group", value);
      groups[group_count++] = (gid_t)parse_id(value, 1, "--group must be a group id");
    } else if (!strcmp(option, "--tap")) {
      const char *colon = strchr(value, ':');
      if (!colon || tap_count == MAX_TAPS) fail("--tap takes FD:NAME", value);
      char fd_text[8];
      size_t fd_length = (size_t)(colon - value);
      if (fd_length == 0 || fd_length >= sizeof fd_text) fail("--tap takes FD:NAME", value);
      memcpy(fd_text, value, fd_length);
      fd_text[fd_length] = 0;
      taps[tap_count].target = (int)parse_id(fd_text, 3, "--tap's descriptor must be 3 or more");
      if (taps[tap_count].target > 255) fail("--tap's descriptor must be below 256", value);
      if (!valid_tap_name(colon + 1)) fail("not a tap name", colon + 1);
      taps[tap_count++].name = colon + 1;
    } else fail("unknown option", option);
  }
  if (!uid || !gid) fail("--uid and --gid are required", NULL);
  if (i >= argc) fail("no program to run after --", NULL);
  if (getuid() != 0) fail("must be started by root (the agent)", NULL);

  /* Taps are opened on high descriptors first, so that placing one never closes another. */
  int opened[MAX_TAPS];
  for (int t = 0; t < tap_count; t++) {
    int fd = open_tap(taps[t].name);
    opened[t] = fcntl(fd, F_DUPFD_CLOEXEC, 512);
    if (opened[t] < 0) fail("cannot move the tap's descriptor", taps[t].name);
    close(fd);
  }
  for (int t = 0; t < tap_count; t++) {
    /* dup2 leaves the new descriptor open across exec. */
    if (dup2(opened[t], taps[t].target) < 0) fail("cannot place the tap's descriptor", taps[t].name);
    close(opened[t]);
  }

  if (setgroups((size_t)group_count, groups) < 0) fail("setgroups", NULL);
  if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) < 0) fail("setresgid", NULL);
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0) fail("setresuid", NULL);
  if (setuid(0) == 0 || geteuid() == 0 || getegid() == 0) {
    errno = 0;
    fail("root could be regained after dropping it; refusing to run", NULL);
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail("cannot set no_new_privs", NULL);
  umask(077);
  execvp(argv[i], &argv[i]);
  fail("cannot run", argv[i]);
  return 127;
}
