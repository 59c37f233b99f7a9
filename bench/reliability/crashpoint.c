/*
 * crashpoint: an LD_PRELOAD library that counts the write-side calls a process makes and SIGKILLs it
 * at the N-th one (bench/reliability/crash.py builds and drives it).
 *
 * Counted while armed: write, pwrite, pwrite64, writev, pwritev (on regular files only: not on
 * pipes, sockets or terminals), fsync, fdatasync, sync_file_range (of files and directories), ftruncate, truncate, fallocate,
 * rename, renameat, renameat2, link, linkat, symlink, unlink, unlinkat, rmdir, mkdir, mkdirat, and
 * open/openat/creat with O_CREAT or O_TRUNC. These are the calls through which SQLite (its unix VFS),
 * CPython's os and io modules and glibc change what is on disk; memory-mapped writes (SQLite's
 * -shm wal-index) are not calls and are not counted: that file is rebuilt by SQLite's recovery.
 *
 * crashpoint_arm(at, torn, trace_fd): count from now on; at the at-th point (1-based) SIGKILL the
 * process *before* the call runs, or, with torn set and a write, after writing only half of its
 * bytes (a torn write). at = 0 kills nowhere. trace_fd >= 0 receives one line per point:
 * "<number> <call> <file>". crashpoint_disarm() stops counting and returns the points counted.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static volatile int armed = 0;
static long counted = 0;
static long kill_at = 0;
static int torn_mode = 0;
static int trace_fd = -1;

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

void crashpoint_arm(long at, int torn, int trace) {
    counted = 0;
    kill_at = at;
    torn_mode = torn;
    trace_fd = trace;
    armed = 1;
}

long crashpoint_disarm(void) {
    armed = 0;
    return counted;
}

static void die(void) {
    kill(getpid(), SIGKILL);
    for (;;) pause();
}

static void trace_line(const char *call, const char *what) {
    char line[PATH_MAX + 64];
    int size = snprintf(line, sizeof line, "%ld %s %s\n", counted, call, what ? what : "-");
    if (size > 0) {
        ssize_t (*real_write)(int, const void *, size_t) = REAL(write);
        if (real_write(trace_fd, line, (size_t)(size < (int)sizeof line ? size : (int)sizeof line - 1)) < 0) {
            trace_fd = -1;
        }
    }
}

static void fd_name(int fd, char *name, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, name, size - 1);
    name[length < 0 ? 0 : length] = '\0';
}

/* A file whose content is on disk: a regular file, or (for the syncs) a directory. */
static int on_disk(int fd, const char *call) {
    struct stat info;
    if (fstat(fd, &info) != 0) return 0;
    return S_ISREG(info.st_mode) || (S_ISDIR(info.st_mode) && strstr(call, "sync") != NULL);
}

/* One point: returns 1 when the caller is to tear its write (then die), 0 to go on. */
static int point(const char *call, int fd, const char *path) {
    if (!armed) return 0;
    if (fd >= 0 && !on_disk(fd, call)) return 0;
    int was_armed = armed;
    armed = 0; /* what this function itself calls is not counted */
    counted++;
    if (trace_fd >= 0) {
        char name[PATH_MAX];
        if (path == NULL) fd_name(fd, name, sizeof name);
        trace_line(call, path ? path : name);
    }
    if (kill_at && counted == kill_at) {
        if (torn_mode && fd >= 0 && strstr(call, "write") != NULL) return 1;
        die();
    }
    armed = was_armed;
    return 0;
}

ssize_t write(int fd, const void *buffer, size_t count) {
    if (point("write", fd, NULL)) {
        REAL(write)(fd, buffer, count / 2);
        die();
    }
    return REAL(write)(fd, buffer, count);
}

ssize_t pwrite(int fd, const void *buffer, size_t count, off_t offset) {
    if (point("pwrite", fd, NULL)) {
        REAL(pwrite)(fd, buffer, count / 2, offset);
        die();
    }
    return REAL(pwrite)(fd, buffer, count, offset);
}

ssize_t pwrite64(int fd, const void *buffer, size_t count, off64_t offset) {
    if (point("pwrite64", fd, NULL)) {
        REAL(pwrite64)(fd, buffer, count / 2, offset);
        die();
    }
    return REAL(pwrite64)(fd, buffer, count, offset);
}

static int half_of(const struct iovec *iov, int iovcnt, struct iovec *out) {
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
    size_t left = total / 2;
    int used = 0;
    for (int i = 0; i < iovcnt && left > 0; i++, used++) {
        out[i] = iov[i];
        if (out[i].iov_len > left) out[i].iov_len = left;
        left -= out[i].iov_len;
    }
    return used;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    if (point("writev", fd, NULL)) {
        struct iovec half[64];
        int used = half_of(iov, iovcnt < 64 ? iovcnt : 64, half);
        if (used) REAL(writev)(fd, half, used);
        die();
    }
    return REAL(writev)(fd, iov, iovcnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    if (point("pwritev", fd, NULL)) {
        struct iovec half[64];
        int used = half_of(iov, iovcnt < 64 ? iovcnt : 64, half);
        if (used) REAL(pwritev)(fd, half, used, offset);
        die();
    }
    return REAL(pwritev)(fd, iov, iovcnt, offset);
}

int fsync(int fd) {
    point("fsync", fd, NULL);
    return REAL(fsync)(fd);
}

int fdatasync(int fd) {
    point("fdatasync", fd, NULL);
    return REAL(fdatasync)(fd);
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
    point("sync_file_range", fd, NULL);
    return REAL(sync_file_range)(fd, offset, nbytes, flags);
}

int ftruncate(int fd, off_t length) {
    point("ftruncate", fd, NULL);
    return REAL(ftruncate)(fd, length);
}

int ftruncate64(int fd, off64_t length) {
    point("ftruncate64", fd, NULL);
    return REAL(ftruncate64)(fd, length);
}

int truncate(const char *path, off_t length) {
    point("truncate", -1, path);
    return REAL(truncate)(path, length);
}

int fallocate(int fd, int mode, off_t offset, off_t length) {
    point("fallocate", fd, NULL);
    return REAL(fallocate)(fd, mode, offset, length);
}

int posix_fallocate(int fd, off_t offset, off_t length) {
    point("posix_fallocate", fd, NULL);
    return REAL(posix_fallocate)(fd, offset, length);
}

int rename(const char *old, const char *new) {
    point("rename", -1, new);
    return REAL(rename)(old, new);
}

int renameat(int olddir, const char *old, int newdir, const char *new) {
    point("renameat", -1, new);
    return REAL(renameat)(olddir, old, newdir, new);
}

int renameat2(int olddir, const char *old, int newdir, const char *new, unsigned int flags) {
    point("renameat2", -1, new);
    return REAL(renameat2)(olddir, old, newdir, new, flags);
}

int link(const char *old, const char *new) {
    point("link", -1, new);
    return REAL(link)(old, new);
}

int linkat(int olddir, const char *old, int newdir, const char *new, int flags) {
    point("linkat", -1, new);
    return REAL(linkat)(olddir, old, newdir, new, flags);
}

int symlink(const char *target, const char *path) {
    point("symlink", -1, path);
    return REAL(symlink)(target, path);
}

int unlink(const char *path) {
    point("unlink", -1, path);
    return REAL(unlink)(path);
}

int unlinkat(int dir, const char *path, int flags) {
    point("unlinkat", -1, path);
    return REAL(unlinkat)(dir, path, flags);
}

int rmdir(const char *path) {
    point("rmdir", -1, path);
    return REAL(rmdir)(path);
}

int mkdir(const char *path, mode_t mode) {
    point("mkdir", -1, path);
    return REAL(mkdir)(path, mode);
}

int mkdirat(int dir, const char *path, mode_t mode) {
    point("mkdirat", -1, path);
    return REAL(mkdirat)(dir, path, mode);
}

#define CREATES(flags) ((flags) & (O_CREAT | O_TRUNC))
/* The optional third argument of open(): the mode, present with O_CREAT or O_TMPFILE. */
#define TAKE_MODE(flags)                        \
    mode_t mode = 0;                            \
    if ((flags) & (O_CREAT | O_TMPFILE)) {      \
        va_list args;                           \
        va_start(args, flags);                  \
        mode = va_arg(args, mode_t);            \
        va_end(args);                           \
    }

int open(const char *path, int flags, ...) {
    TAKE_MODE(flags)
    if (CREATES(flags)) point("open", -1, path);
    return REAL(open)(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    TAKE_MODE(flags)
    if (CREATES(flags)) point("open", -1, path);
    return REAL(open64)(path, flags, mode);
}

int openat(int dir, const char *path, int flags, ...) {
    TAKE_MODE(flags)
    if (CREATES(flags)) point("openat", -1, path);
    return REAL(openat)(dir, path, flags, mode);
}

int openat64(int dir, const char *path, int flags, ...) {
    TAKE_MODE(flags)
    if (CREATES(flags)) point("openat", -1, path);
    return REAL(openat64)(dir, path, flags, mode);
}

int creat(const char *path, mode_t mode) {
    point("creat", -1, path);
    return REAL(creat)(path, mode);
}
