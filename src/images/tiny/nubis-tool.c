/*
 * nubis-tool: the workloads of the Nubis tiny guest, compiled static (gcc -static -O2) by
 * src/images/build-tiny.ts. The guest contract is in src/images/README-guest.md.
 *
 *   nubis-tool dirty                       print the dirtying workload's state as JSON
 *   nubis-tool dirty RATE_MB WSS_MB        start or replace it (RATE_MB 0 stops it)
 *   nubis-tool disk-write DEV MB SEED      write MB MiB of checksummed blocks, on stable storage
 *   nubis-tool disk-verify DEV MB SEED     read them back; exit status 0 only when all intact
 *   nubis-tool tpm-extend PCR HEXDIGEST    extend a SHA-256 PCR of the VM's TPM 2.0 (/dev/tpmrm0)
 *   nubis-tool tpm-read PCR                print a SHA-256 PCR's value
 *   nubis-tool tpm-quote NONCEHEX          a signed quote of PCRs 0-7 over NONCEHEX, with the PCRs
 *   nubis-tool cgi-index|cgi-dirty|cgi-disk   the same as CGI programs for busybox httpd
 *
 * Every command prints one JSON object on stdout. Exit status: 0 success, 1 verification found
 * bad blocks, 2 bad arguments or an I/O error.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STATE_DIR "/run/nubis"
#define DIRTY_PID_FILE STATE_DIR "/dirty.pid"
#define DIRTY_STATE_FILE STATE_DIR "/dirty.state"
#define REQUESTS_FILE STATE_DIR "/requests"
#define NAME_FILE STATE_DIR "/name"
#define DIRTY_PROCESS_NAME "nubis-dirty"

#define PAGE_BYTES 4096u
#define BLOCK_BYTES 4096u
#define MIB (1024u * 1024u)
#define BLOCKS_PER_MIB (MIB / BLOCK_BYTES)
#define BAD_BLOCKS_LISTED 16
#define DIRTY_TICK_NS 10000000L /* pace in 10 ms steps */
#define RESULT_BYTES 1024

/* The largest numbers accepted: 64 GiB of disk, 1 GiB/s of dirtying, 64 GiB of working set. */
#define MAX_DISK_MB 65536ull
#define MAX_RATE_MB 1024ull
#define MAX_WSS_MB 65536ull
#define MAX_SEED 9999999999999999999ull /* 19 digits: what parse_u64 reads without overflow */

/* Set by the cgi-* commands: errors then become HTTP statuses instead of exit statuses. */
static int cgi_mode;

/* Prints {"ok":false,"error":...} (as a 400 or 500 answer in CGI mode) and exits 2. */
static void fail(int http_status, const char *format, ...) {
  char message[512];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof message, format, args);
  va_end(args);
  if (cgi_mode) {
    printf("Status: %d %s\r\nContent-Type: application/json\r\n\r\n", http_status,
           http_status == 400 ? "Bad Request" : "Internal Server Error");
  }
  /* Messages are built from validated numbers and fixed text: no JSON escaping needed but quotes. */
  for (char *c = message; *c; c++) if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) *c = '\'';
  printf("{\"ok\":false,\"error\":\"%s\"}\n", message);
  if (!cgi_mode) fprintf(stderr, "nubis-tool: %s\n", message);
  exit(2);
}

/* Decimal digits only, at most `max`; anything else is refused. */
static int parse_u64(const char *text, uint64_t max, uint64_t *out) {
  if (!text || !*text || strlen(text) > 19) return -1;
  for (const char *c = text; *c; c++) if (!isdigit((unsigned char)*c)) return -1;
  unsigned long long value = strtoull(text, NULL, 10);
  if (value > max) return -1;
  *out = value;
  return 0;
}

static uint64_t number_arg(const char *text, uint64_t max, const char *what) {
  uint64_t value;
  if (parse_u64(text, max, &value) != 0) fail(400, "%s must be a whole number from 0 to %llu, not %s", what, (unsigned long long)max, text ? text : "(missing)");
  return value;
}

static void ensure_state_dir(void) {
  mkdir("/run", 0755);
  mkdir(STATE_DIR, 0755);
}

static int read_small_file(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = 0;
  return 0;
}

static void write_small_file(const char *path, const char *text) {
  char tmp[256];
  snprintf(tmp, sizeof tmp, "%s.%d", path, (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (write(fd, text, strlen(text)) < 0) { /* the state file is advisory */ }
  close(fd);
  rename(tmp, path);
}

/* ---- memory-dirtying workload ------------------------------------------------------------ */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A byte that differs from the page's previous one on every pass and is never zero: QEMU skips
 * zero pages and the page-sampling dirty rate hashes contents (HOST-FACTS "Hypervisor"). */
static inline unsigned char page_byte(uint64_t pass, uint64_t page) {
  return (unsigned char)(1 + (pass * 7 + page) % 255);
}

static void dirty_worker(uint64_t rate_mb, uint64_t wss_mb, int ready_fd) {
  prctl(PR_SET_NAME, DIRTY_PROCESS_NAME);
  /* If the guest runs short of memory, this is what the OOM killer should take, not httpd. */
  write_small_file("/proc/self/oom_score_adj", "1000");
  size_t bytes = (size_t)wss_mb * MIB;
  size_t pages = bytes / PAGE_BYTES;
  unsigned char *memory = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (memory == MAP_FAILED) _exit(1); /* the parent sees the pipe close without a byte */
  for (size_t page = 0; page < pages; page++) memset(memory + page * PAGE_BYTES, page_byte(0, page), PAGE_BYTES);

  char pid_text[32];
  snprintf(pid_text, sizeof pid_text, "%d\n", (int)getpid());
  write_small_file(DIRTY_PID_FILE, pid_text);
  if (write(ready_fd, "1", 1) != 1) _exit(1);
  close(ready_fd);

  double pages_per_tick = (double)rate_mb * MIB / PAGE_BYTES * DIRTY_TICK_NS / 1e9;
  double credit = 0;
  uint64_t pass = 1;
  size_t page = 0;
  int64_t next = now_ns();
  for (;;) {
    next += DIRTY_TICK_NS;
    struct timespec until = { .tv_sec = next / 1000000000, .tv_nsec = next % 1000000000 };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR) {}
    /* A guest paused (migration downtime, a stopped VM) must not come back and burst to catch
     * up: forget any debt older than a second so the rate stays about RATE_MB. */
    int64_t late = now_ns() - next;
    if (late > 1000000000) { next += late; credit = 0; }
    credit += pages_per_tick;
    while (credit >= 1) {
      memset(memory + page * PAGE_BYTES, page_byte(pass, page), PAGE_BYTES);
      credit -= 1;
      if (++page == pages) { page = 0; pass++; }
    }
  }
}

/* The pid of the running workload, or 0. The pid file alone could name a recycled pid. */
static pid_t dirty_worker_pid(void) {
  char text[64], path[64], stat_text[256];
  if (read_small_file(DIRTY_PID_FILE, text, sizeof text) != 0) return 0;
  pid_t pid = (pid_t)atoi(text);
  if (pid <= 0) return 0;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  if (read_small_file(path, stat_text, sizeof stat_text) != 0) return 0;
  /* "<pid> (<comm>) <state> ..."; a zombie has exited already. */
  char *open_paren = strchr(stat_text, '('), *close_paren = strrchr(stat_text, ')');
  if (!open_paren || !close_paren || close_paren[1] != ' ' || close_paren[2] == 'Z') return 0;
  *close_paren = 0;
  return strcmp(open_paren + 1, DIRTY_PROCESS_NAME) == 0 ? pid : 0;
}

static void dirty_stop(void) {
  pid_t pid = dirty_worker_pid();
  if (pid > 0) {
    kill(pid, SIGTERM);
    /* Wait for its memory to be freed before a replacement allocates its own. */
    for (int waited_ms = 0; dirty_worker_pid() == pid; waited_ms += 10) {
      if (waited_ms == 3000) kill(pid, SIGKILL);
      if (waited_ms > 10000) fail(500, "Dirtying workload pid %d does not exit", (int)pid);
      usleep(10000);
    }
  }
  unlink(DIRTY_PID_FILE);
  write_small_file(DIRTY_STATE_FILE, "0 0\n");
}

static uint64_t available_memory_mb(void) {
  char text[4096];
  if (read_small_file("/proc/meminfo", text, sizeof text) != 0) return 0;
  char *line = strstr(text, "MemAvailable:");
  return line ? strtoull(line + strlen("MemAvailable:"), NULL, 10) / 1024 : 0;
}

static void print_dirty_state(void) {
  char text[64];
  unsigned long long rate_mb = 0, wss_mb = 0;
  int running = dirty_worker_pid() > 0;
  if (running && read_small_file(DIRTY_STATE_FILE, text, sizeof text) == 0) sscanf(text, "%llu %llu", &rate_mb, &wss_mb);
  if (!running) rate_mb = wss_mb = 0;
  printf("{\"running\":%s,\"rateMb\":%llu,\"wssMb\":%llu}\n", running ? "true" : "false", rate_mb, wss_mb);
}

static void dirty_start(uint64_t rate_mb, uint64_t wss_mb) {
  ensure_state_dir();
  /* Two requests at once must not both start a workload; the lock ends when this command does. */
  int lock_fd = open(STATE_DIR "/dirty.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0 || flock(lock_fd, LOCK_EX) != 0) fail(500, "Cannot lock the dirtying workload state: %s", strerror(errno));
  dirty_stop();
  if (rate_mb == 0) return;
  if (wss_mb == 0) fail(400, "wss_mb must be at least 1 when rate_mb is %llu", (unsigned long long)rate_mb);
  /* Leave 16 MiB so that the shell, httpd and the page cache keep working. */
  uint64_t available_mb = available_memory_mb();
  if (wss_mb + 16 > available_mb) fail(400, "wss_mb=%llu does not fit: the guest has %llu MiB available, 16 of which stay free", (unsigned long long)wss_mb, (unsigned long long)available_mb);

  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) fail(500, "pipe: %s", strerror(errno));
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) fail(500, "fork: %s", strerror(errno));
  if (child == 0) {
    /* Detach twice: init adopts the worker, and it holds none of the CGI's descriptors, so
     * httpd sees the answer end when this command exits. */
    setsid();
    if (fork() != 0) _exit(0);
    close(ready[0]);
    close(lock_fd); /* a forked flock descriptor would hold the lock for the worker's lifetime */
    int null_fd = open("/dev/null", O_RDWR);
    if (null_fd >= 0) { dup2(null_fd, 0); dup2(null_fd, 1); dup2(null_fd, 2); if (null_fd > 2) close(null_fd); }
    dirty_worker(rate_mb, wss_mb, ready[1]);
    _exit(0);
  }
  close(ready[1]);
  waitpid(child, NULL, 0);
  char byte;
  ssize_t n;
  while ((n = read(ready[0], &byte, 1)) < 0 && errno == EINTR) {}
  close(ready[0]);
  if (n != 1) fail(500, "The dirtying workload could not allocate %llu MiB", (unsigned long long)wss_mb);
  char state[64];
  snprintf(state, sizeof state, "%llu %llu\n", (unsigned long long)rate_mb, (unsigned long long)wss_mb);
  write_small_file(DIRTY_STATE_FILE, state);
}

/* ---- disk pattern -------------------------------------------------------------------------- */

/*
 * Block layout (little-endian), 4096 bytes:
 *   0  "NUBISBLK"   8  block number (u64)   16  seed (u64)   24  CRC-32 of bytes 32..4095 (u32)
 *   28 zero (u32)   32 payload: splitmix64 stream seeded from (seed, block number)
 * A block that is stale, shifted, from another seed or corrupted fails the comparison.
 */
static uint32_t crc_table[256];

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc32_of(const unsigned char *data, size_t length) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < length; i++) c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static void put_le(unsigned char *at, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; i++) at[i] = (unsigned char)(value >> (8 * i));
}

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void fill_block(unsigned char *block, uint64_t number, uint64_t seed) {
  memcpy(block, "NUBISBLK", 8);
  put_le(block + 8, number, 8);
  put_le(block + 16, seed, 8);
  put_le(block + 28, 0, 4);
  uint64_t state = seed ^ (number * 0xD1B54A32D192ED03ull);
  for (size_t at = 32; at < BLOCK_BYTES; at += 8) put_le(block + at, splitmix64(&state), 8);
  put_le(block + 24, crc32_of(block + 32, BLOCK_BYTES - 32), 4);
}

/* Opens DEV with O_DIRECT so that writes bypass and reads do not come from the guest's page
 * cache: a verify must read what is on the virtual disk. Files on tmpfs refuse O_DIRECT; they
 * fall back to buffered I/O (then fsync on write and a cache drop before a read). */
static int open_disk(const char *path, int flags, int *direct) {
  int fd = open(path, flags | O_DIRECT | O_CLOEXEC);
  *direct = fd >= 0;
  if (fd < 0 && errno == EINVAL) fd = open(path, flags | O_CLOEXEC);
  if (fd < 0) fail(errno == ENOENT ? 400 : 500, "Cannot open %s: %s", path, strerror(errno));
  return fd;
}

static void check_disk_size(int fd, const char *path, uint64_t mb) {
  struct stat st;
  uint64_t size = 0;
  if (fstat(fd, &st) != 0) fail(500, "Cannot stat %s: %s", path, strerror(errno));
  if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) fail(500, "Cannot get the size of %s: %s", path, strerror(errno));
  } else if (S_ISREG(st.st_mode)) {
    size = (uint64_t)st.st_size;
  } else {
    fail(400, "%s is neither a block device nor a file", path);
  }
  if (size < mb * MIB) fail(400, "%s holds %llu MiB, fewer than the %llu MiB asked for", path, (unsigned long long)(size / MIB), (unsigned long long)mb);
}

static unsigned char *aligned_buffer(void) {
  void *buffer;
  if (posix_memalign(&buffer, BLOCK_BYTES, MIB) != 0) fail(500, "Out of memory for a 1 MiB buffer");
  return buffer;
}

static void disk_write(const char *path, uint64_t mb, uint64_t seed, char *result, size_t result_size) {
  int direct;
  int fd = open_disk(path, O_RDWR, &direct);
  if (!direct) {
    /* A regular file opened for writing with the size check below needs its length first. */
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size < mb * MIB && ftruncate(fd, (off_t)(mb * MIB)) != 0) fail(500, "Cannot extend %s: %s", path, strerror(errno));
  }
  check_disk_size(fd, path, mb);
  unsigned char *buffer = aligned_buffer();
  for (uint64_t chunk = 0; chunk < mb; chunk++) {
    for (uint64_t i = 0; i < BLOCKS_PER_MIB; i++) fill_block(buffer + i * BLOCK_BYTES, chunk * BLOCKS_PER_MIB + i, seed);
    for (size_t done = 0; done < MIB;) {
      ssize_t n = pwrite(fd, buffer + done, MIB - done, (off_t)(chunk * MIB + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail(500, "Write to %s at MiB %llu failed: %s", path, (unsigned long long)chunk, n < 0 ? strerror(errno) : "no progress");
      done += (size_t)n;
    }
  }
  /* O_DIRECT skips the page cache, not the disk's volatile cache: fsync flushes that too. */
  if (fsync(fd) != 0) fail(500, "fsync of %s failed: %s", path, strerror(errno));
  close(fd);
  snprintf(result, result_size, "{\"ok\":true,\"blocks\":%llu}\n", (unsigned long long)(mb * BLOCKS_PER_MIB));
}

static int disk_verify(const char *path, uint64_t mb, uint64_t seed, char *result, size_t result_size) {
  int direct;
  int fd = open_disk(path, O_RDONLY, &direct);
  check_disk_size(fd, path, mb);
  if (!direct) {
    ioctl(fd, BLKFLSBUF, 0);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  }
  unsigned char *buffer = aligned_buffer();
  unsigned char expected[BLOCK_BYTES];
  uint64_t bad[BAD_BLOCKS_LISTED];
  uint64_t bad_count = 0;
  for (uint64_t chunk = 0; chunk < mb; chunk++) {
    for (size_t done = 0; done < MIB;) {
      ssize_t n = pread(fd, buffer + done, MIB - done, (off_t)(chunk * MIB + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail(500, "Read from %s at MiB %llu failed: %s", path, (unsigned long long)chunk, n < 0 ? strerror(errno) : "end of device");
      done += (size_t)n;
    }
    for (uint64_t i = 0; i < BLOCKS_PER_MIB; i++) {
      uint64_t number = chunk * BLOCKS_PER_MIB + i;
      fill_block(expected, number, seed);
      if (memcmp(buffer + i * BLOCK_BYTES, expected, BLOCK_BYTES) != 0) {
        if (bad_count < BAD_BLOCKS_LISTED) bad[bad_count] = number;
        bad_count++;
      }
    }
  }
  close(fd);
  unsigned long long blocks = mb * BLOCKS_PER_MIB;
  if (bad_count == 0) {
    snprintf(result, result_size, "{\"ok\":true,\"blocks\":%llu}\n", blocks);
    return 0;
  }
  int length = snprintf(result, result_size, "{\"ok\":false,\"blocks\":%llu,\"badBlocks\":[", blocks);
  for (uint64_t i = 0; i < bad_count && i < BAD_BLOCKS_LISTED; i++) length += snprintf(result + length, result_size - (size_t)length, "%s%llu", i ? "," : "", (unsigned long long)bad[i]);
  snprintf(result + length, result_size - (size_t)length, "],\"badCount\":%llu}\n", (unsigned long long)bad_count);
  return 1;
}

/* ---- CGI ----------------------------------------------------------------------------------- */

/* The value of `key` in QUERY_STRING, or NULL. Values are numbers and device names, so only
 * [A-Za-z0-9_-] is accepted; percent-escapes are not decoded. */
static const char *query_param(const char *key) {
  static char values[8][64];
  static int used;
  const char *query = getenv("QUERY_STRING");
  size_t key_length = strlen(key);
  for (const char *at = query; at && *at;) {
    const char *end = strchr(at, '&');
    size_t length = end ? (size_t)(end - at) : strlen(at);
    if (length > key_length && strncmp(at, key, key_length) == 0 && at[key_length] == '=') {
      size_t value_length = length - key_length - 1;
      if (value_length >= sizeof values[0] || used == 8) fail(400, "Query parameter %s is too long", key);
      char *value = values[used++];
      memcpy(value, at + key_length + 1, value_length);
      value[value_length] = 0;
      for (char *c = value; *c; c++) if (!isalnum((unsigned char)*c) && *c != '_' && *c != '-') fail(400, "Query parameter %s has characters other than letters, digits, - and _", key);
      return value;
    }
    at = end ? end + 1 : NULL;
  }
  return NULL;
}

static void cgi_json_header(void) { printf("Content-Type: application/json\r\n\r\n"); }

static int cgi_index(void) {
  ensure_state_dir();
  char name[256] = "tiny";
  if (read_small_file(NAME_FILE, name, sizeof name) == 0) name[strcspn(name, "\n")] = 0;
  /* httpd runs requests in parallel processes: the count is read and bumped under a lock. */
  int fd = open(REQUESTS_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || flock(fd, LOCK_EX) != 0) fail(500, "Cannot lock %s: %s", REQUESTS_FILE, strerror(errno));
  char text[32] = {0};
  ssize_t n = pread(fd, text, sizeof text - 1, 0);
  unsigned long long count = (n > 0 ? strtoull(text, NULL, 10) : 0) + 1;
  int length = snprintf(text, sizeof text, "%llu\n", count);
  if (pwrite(fd, text, (size_t)length, 0) != length || ftruncate(fd, length) != 0) fail(500, "Cannot update %s: %s", REQUESTS_FILE, strerror(errno));
  close(fd);
  printf("Content-Type: text/plain\r\n\r\n%s requests=%llu", name, count);
  return 0;
}

static int cgi_dirty(void) {
  const char *rate = query_param("rate_mb");
  if (rate) {
    uint64_t rate_mb = number_arg(rate, MAX_RATE_MB, "rate_mb");
    const char *wss = query_param("wss_mb");
    uint64_t wss_mb = rate_mb == 0 && !wss ? 0 : number_arg(wss, MAX_WSS_MB, "wss_mb");
    dirty_start(rate_mb, wss_mb);
  }
  cgi_json_header();
  print_dirty_state();
  return 0;
}

static int cgi_disk(void) {
  const char *op = query_param("op");
  const char *dev = query_param("dev");
  if (!op || (strcmp(op, "write") != 0 && strcmp(op, "verify") != 0)) fail(400, "op must be write or verify");
  if (!dev) fail(400, "dev must name a disk, such as vdb");
  uint64_t mb = number_arg(query_param("mb"), MAX_DISK_MB, "mb");
  uint64_t seed = number_arg(query_param("seed"), MAX_SEED, "seed");
  if (mb == 0) fail(400, "mb must be at least 1");
  char path[96], result[RESULT_BYTES];
  snprintf(path, sizeof path, "/dev/%s", dev);
  /* Nothing is printed before the work is done, so that fail() can still send its status. */
  if (strcmp(op, "write") == 0) disk_write(path, mb, seed, result, sizeof result);
  else disk_verify(path, mb, seed, result, sizeof result);
  cgi_json_header();
  fputs(result, stdout);
  return 0;
}

/*
 * TPM 2.0 over the kernel's character device, with raw commands (TCG "TPM 2.0 Library, Part 3:
 * Commands"): every field big-endian, a 10-byte header (tag, size, command code) and, for a
 * command on an authorised handle, a password session (TPM_RS_PW) with an empty password.
 */
#define TPM_ST_NO_SESSIONS 0x8001u
#define TPM_ST_SESSIONS 0x8002u
#define TPM_CC_PCR_EXTEND 0x00000182u
#define TPM_CC_PCR_READ 0x0000017Eu
#define TPM_RS_PW 0x40000009u
#define TPM_ALG_SHA256 0x000Bu
#define SHA256_BYTES 32
#define MAX_PCR 23

static size_t put16(uint8_t *at, uint16_t value) { at[0] = value >> 8; at[1] = value; return 2; }
static size_t put32(uint8_t *at, uint32_t value) { at[0] = value >> 24; at[1] = value >> 16; at[2] = value >> 8; at[3] = value; return 4; }
static uint32_t get32(const uint8_t *at) { return (uint32_t)at[0] << 24 | (uint32_t)at[1] << 16 | (uint32_t)at[2] << 8 | at[3]; }

/* One open TPM device for the whole command: with /dev/tpmrm0, a key created by one TPM command
 * is gone once the device is closed, so a quote's key must live on the same open device. */
static int tpm_fd = -1;

/* Sends `command` (its size field filled in here) and reads the answer; fails unless its response code is 0. */
static size_t tpm_transact(uint8_t *command, size_t length, uint8_t *response, size_t capacity) {
  put32(command + 2, (uint32_t)length);
  if (tpm_fd < 0) tpm_fd = open("/dev/tpmrm0", O_RDWR);
  if (tpm_fd < 0) tpm_fd = open("/dev/tpm0", O_RDWR);
  if (tpm_fd < 0) fail(500, "no TPM: cannot open /dev/tpmrm0 or /dev/tpm0 (%s)", strerror(errno));
  if (write(tpm_fd, command, length) != (ssize_t)length) fail(500, "cannot send the TPM command: %s", strerror(errno));
  ssize_t got = read(tpm_fd, response, capacity);
  if (got < 10) fail(500, "short TPM response (%zd bytes)", got);
  uint32_t rc = get32(response + 6);
  if (rc != 0) fail(500, "TPM response code 0x%08x", rc);
  return (size_t)got;
}

static uint32_t pcr_arg(const char *text) {
  return (uint32_t)number_arg(text, MAX_PCR, "PCR");
}

/* TPM2_PCR_Read of one SHA-256 PCR; prints it as JSON. */
static int tpm_read(uint32_t pcr) {
  uint8_t command[32], response[512];
  size_t n = put16(command, TPM_ST_NO_SESSIONS) + 4;
  n += put32(command + n, TPM_CC_PCR_READ);
  n += put32(command + n, 1);                /* TPML_PCR_SELECTION: one bank */
  n += put16(command + n, TPM_ALG_SHA256);
  command[n++] = 3;                          /* sizeofSelect: PCRs 0-23 */
  command[n++] = pcr < 8 ? 1u << pcr : 0;
  command[n++] = pcr >= 8 && pcr < 16 ? 1u << (pcr - 8) : 0;
  command[n++] = pcr >= 16 ? 1u << (pcr - 16) : 0;
  size_t got = tpm_transact(command, n, response, sizeof response);
  /* header, pcrUpdateCounter, the selection echoed (count + one 6-byte entry), TPML_DIGEST count, TPM2B size */
  const size_t digest_at = 10 + 4 + 10 + 4 + 2;
  if (got < digest_at + SHA256_BYTES || get32(response + 24) != 1) fail(500, "the TPM returned no value for PCR %u", pcr);
  printf("{\"ok\":true,\"pcr\":%u,\"bank\":\"sha256\",\"value\":\"", pcr);
  for (int i = 0; i < SHA256_BYTES; i++) printf("%02x", response[digest_at + i]);
  printf("\"}\n");
  return 0;
}

static size_t put_password_session(uint8_t *at) {
  size_t n = put32(at, 9);                   /* authorizationSize */
  n += put32(at + n, TPM_RS_PW);             /* empty nonce, attributes and password */
  n += put16(at + n, 0);
  at[n++] = 0;
  n += put16(at + n, 0);
  return n;
}

/* `length` bytes from the hex digits of `hex` (exactly 2 * length of them), or a 400 naming `what`. */
static void parse_hex(const char *hex, uint8_t *out, size_t length, const char *what) {
  for (size_t i = 0; i < length; i++) {
    if (!isxdigit((unsigned char)hex[2 * i]) || !isxdigit((unsigned char)hex[2 * i + 1])) fail(400, "%s must be hex digits", what);
    char pair[3] = {hex[2 * i], hex[2 * i + 1], 0};
    out[i] = (uint8_t)strtoul(pair, NULL, 16);
  }
}

/* TPM2_PCR_Extend of one SHA-256 PCR with `hex` (64 hex digits), then prints its new value. */
static int tpm_extend(uint32_t pcr, const char *hex) {
  uint8_t digest[SHA256_BYTES];
  if (strlen(hex) != 2 * SHA256_BYTES) fail(400, "HEXDIGEST must be 64 hex digits (a SHA-256 digest)");
  parse_hex(hex, digest, SHA256_BYTES, "HEXDIGEST");
  uint8_t command[96], response[512];
  size_t n = put16(command, TPM_ST_SESSIONS) + 4;
  n += put32(command + n, TPM_CC_PCR_EXTEND);
  n += put32(command + n, pcr);              /* pcrHandle: a PCR's handle is its index */
  n += put_password_session(command + n);
  n += put32(command + n, 1);                /* TPML_DIGEST_VALUES: one digest */
  n += put16(command + n, TPM_ALG_SHA256);
  memcpy(command + n, digest, SHA256_BYTES);
  n += SHA256_BYTES;
  tpm_transact(command, n, response, sizeof response);
  return tpm_read(pcr);
}

#define TPM_CC_CREATE_PRIMARY 0x00000131u
#define TPM_CC_QUOTE 0x00000158u
#define TPM_CC_FLUSH_CONTEXT 0x00000165u
#define TPM_RH_OWNER 0x40000001u
#define TPM_ALG_ECC 0x0023u
#define TPM_ALG_ECDSA 0x0018u
#define TPM_ALG_NULL 0x0010u
#define TPM_ECC_NIST_P256 0x0003u
/* fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign */
#define AK_ATTRIBUTES 0x00050072u
#define QUOTED_PCRS 8 /* PCRs 0-7: the firmware's and the boot's measurements */

static uint16_t get16(const uint8_t *at) { return (uint16_t)(at[0] << 8 | at[1]); }

static void print_hex(const char *name, const uint8_t *bytes, size_t length, const char *after) {
  printf("\"%s\":\"", name);
  for (size_t i = 0; i < length; i++) printf("%02x", bytes[i]);
  printf("\"%s", after);
}

/*
 * A quote of PCRs 0-7 (SHA-256 bank) over NONCEHEX, signed by an attestation key: a restricted
 * ECDSA P-256 signing key the TPM derives from its owner seed (TPM2_CreatePrimary, the same key
 * each time for this TPM), so a verifier checks the PCR values against the signed digest.
 */
static int tpm_quote(const char *nonce_hex) {
  size_t nonce_length = strlen(nonce_hex) / 2;
  if (strlen(nonce_hex) % 2 || nonce_length < 8 || nonce_length > 32) fail(400, "NONCEHEX must be 16 to 64 hex digits");
  uint8_t nonce[32];
  parse_hex(nonce_hex, nonce, nonce_length, "NONCEHEX");
  uint8_t command[256], response[1024];
  /* TPM2_CreatePrimary under the owner hierarchy */
  size_t n = put16(command, TPM_ST_SESSIONS) + 4;
  n += put32(command + n, TPM_CC_CREATE_PRIMARY);
  n += put32(command + n, TPM_RH_OWNER);
  n += put_password_session(command + n);
  n += put16(command + n, 4);                /* inSensitive: empty userAuth and data */
  n += put16(command + n, 0);
  n += put16(command + n, 0);
  n += put16(command + n, 24);               /* inPublic: TPMT_PUBLIC of 24 bytes */
  n += put16(command + n, TPM_ALG_ECC);
  n += put16(command + n, TPM_ALG_SHA256);
  n += put32(command + n, AK_ATTRIBUTES);
  n += put16(command + n, 0);                /* authPolicy */
  n += put16(command + n, TPM_ALG_NULL);     /* symmetric */
  n += put16(command + n, TPM_ALG_ECDSA);
  n += put16(command + n, TPM_ALG_SHA256);
  n += put16(command + n, TPM_ECC_NIST_P256);
  n += put16(command + n, TPM_ALG_NULL);     /* kdf */
  n += put16(command + n, 0);                /* unique.x, unique.y */
  n += put16(command + n, 0);
  n += put16(command + n, 0);                /* outsideInfo */
  n += put32(command + n, 0);                /* creationPCR: none */
  size_t got = tpm_transact(command, n, response, sizeof response);
  uint32_t key = get32(response + 10);
  /* outPublic's TPMT_PUBLIC starts at 20: type, nameAlg, attributes, authPolicy (empty), then 10 bytes of parameters */
  size_t at = 20 + 2 + 2 + 4 + 2 + get16(response + 28) + 10;
  if (got < at + 4 + 2 * SHA256_BYTES || get16(response + at) != SHA256_BYTES) fail(500, "unexpected public key from TPM2_CreatePrimary");
  const uint8_t *x = response + at + 2, *y = response + at + 4 + SHA256_BYTES;
  printf("{\"ok\":true,");
  print_hex("nonce", nonce, nonce_length, ",");
  printf("\"ak\":{");
  print_hex("x", x, SHA256_BYTES, ",");
  print_hex("y", y, SHA256_BYTES, "},");
  /* TPM2_Quote with the key's own scheme */
  n = put16(command, TPM_ST_SESSIONS) + 4;
  n += put32(command + n, TPM_CC_QUOTE);
  n += put32(command + n, key);
  n += put_password_session(command + n);
  n += put16(command + n, (uint16_t)nonce_length);
  memcpy(command + n, nonce, nonce_length);
  n += nonce_length;
  n += put16(command + n, TPM_ALG_NULL);
  n += put32(command + n, 1);
  n += put16(command + n, TPM_ALG_SHA256);
  command[n++] = 3;
  command[n++] = 0xff;
  command[n++] = 0;
  command[n++] = 0;
  got = tpm_transact(command, n, response, sizeof response);
  size_t quoted_length = get16(response + 14);
  const uint8_t *quoted = response + 16, *signature = quoted + quoted_length;
  if (got < 16 + quoted_length + 4 + 2 * (2 + SHA256_BYTES) || get16(signature) != TPM_ALG_ECDSA || get16(signature + 4) != SHA256_BYTES)
    fail(500, "unexpected answer from TPM2_Quote");
  print_hex("quoted", quoted, quoted_length, ",");
  printf("\"signature\":{");
  print_hex("r", signature + 6, SHA256_BYTES, ",");
  print_hex("s", signature + 8 + SHA256_BYTES, SHA256_BYTES, "},");
  /* The PCR values themselves (their digest is in the quote) */
  n = put16(command, TPM_ST_NO_SESSIONS) + 4;
  n += put32(command + n, TPM_CC_PCR_READ);
  n += put32(command + n, 1);
  n += put16(command + n, TPM_ALG_SHA256);
  command[n++] = 3;
  command[n++] = 0xff;
  command[n++] = 0;
  command[n++] = 0;
  got = tpm_transact(command, n, response, sizeof response);
  if (get32(response + 24) != QUOTED_PCRS || got < 28 + QUOTED_PCRS * (2 + SHA256_BYTES)) fail(500, "the TPM returned no values for PCRs 0-7");
  printf("\"pcrs\":[");
  for (int i = 0; i < QUOTED_PCRS; i++) {
    const uint8_t *digest = response + 28 + i * (2 + SHA256_BYTES) + 2;
    printf("%s\"", i ? "," : "");
    for (int j = 0; j < SHA256_BYTES; j++) printf("%02x", digest[j]);
    printf("\"");
  }
  printf("]}\n");
  n = put16(command, TPM_ST_NO_SESSIONS) + 4;
  n += put32(command + n, TPM_CC_FLUSH_CONTEXT);
  n += put32(command + n, key);
  tpm_transact(command, n, response, sizeof response);
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: nubis-tool dirty [RATE_MB WSS_MB]\n"
          "       nubis-tool disk-write DEV MB SEED\n"
          "       nubis-tool disk-verify DEV MB SEED\n"
          "       nubis-tool tpm-extend PCR HEXDIGEST\n"
          "       nubis-tool tpm-read PCR\n"
          "       nubis-tool tpm-quote NONCEHEX\n"
          "       nubis-tool cgi-index|cgi-dirty|cgi-disk\n");
  exit(2);
}

int main(int argc, char **argv) {
  crc_init();
  if (argc < 2) usage();
  const char *command = argv[1];
  if (strncmp(command, "cgi-", 4) == 0) {
    cgi_mode = 1;
    if (strcmp(command, "cgi-index") == 0) return cgi_index();
    if (strcmp(command, "cgi-dirty") == 0) return cgi_dirty();
    if (strcmp(command, "cgi-disk") == 0) return cgi_disk();
    usage();
  }
  if (strcmp(command, "dirty") == 0) {
    if (argc == 4) dirty_start(number_arg(argv[2], MAX_RATE_MB, "RATE_MB"), number_arg(argv[3], MAX_WSS_MB, "WSS_MB"));
    else if (argc != 2) usage();
    print_dirty_state();
    return 0;
  }
  if (strcmp(command, "tpm-quote") == 0 && argc == 3) return tpm_quote(argv[2]);
  if (strcmp(command, "tpm-read") == 0 && argc == 3) return tpm_read(pcr_arg(argv[2]));
  if (strcmp(command, "tpm-extend") == 0 && argc == 4) return tpm_extend(pcr_arg(argv[2]), argv[3]);
  if ((strcmp(command, "disk-write") == 0 || strcmp(command, "disk-verify") == 0) && argc == 5) {
    uint64_t mb = number_arg(argv[3], MAX_DISK_MB, "MB");
    uint64_t seed = number_arg(argv[4], MAX_SEED, "SEED");
    if (mb == 0) fail(400, "MB must be at least 1");
    char result[RESULT_BYTES];
    int status = command[5] == 'w' ? (disk_write(argv[2], mb, seed, result, sizeof result), 0) : disk_verify(argv[2], mb, seed, result, sizeof result);
    fputs(result, stdout);
    return status;
  }
  usage();
  return 2;
}
