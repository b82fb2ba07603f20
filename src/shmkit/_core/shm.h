/* shm.h — the pieces every shmkit C module shares.
 *
 * Static inline helpers only (each extension module includes this header and
 * gets its own copy of what it uses): a pinned view of a shared mapping with bounds checks,
 * acquire/release atomics on its words, the robust process-shared mutex,
 * futex wait/wake, a bounded spin, test crash points and the copy routine.
 *
 * Shared memory is hostile input: every offset and length that came from it
 * (or from Python) is checked against the mapping before use, and a bad one
 * raises shmkit.errors.LayoutError. Nothing here reads or writes outside the
 * mapping.
 *
 * Memory model: C11 atomics through the GCC __atomic builtins. Each access
 * names its order and, in a comment at the call site, the access it pairs
 * with. The same code is correct on x86-64 (TSO) and arm64 (weak).
 */
#ifndef SHMKIT_SHM_H
#define SHMKIT_SHM_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#define SHM_HAVE_FUTEX 1
#else
#define SHM_HAVE_FUTEX 0
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SHM_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define SHM_PAUSE() __asm__ __volatile__("yield" ::: "memory")
#else
#define SHM_PAUSE() __asm__ __volatile__("" ::: "memory")
#endif

/* Robust process-shared mutexes: glibc and musl on Linux (PTHREAD_MUTEX_ROBUST
 * is an enum constant there, not a macro, so test the platform). */
#if defined(__linux__)
#define SHM_HAVE_ROBUST 1
#else
#define SHM_HAVE_ROBUST 0
#endif

/* pthread_mutex_clocklock arrived in glibc 2.30; older glibc (and musl) time
 * out on CLOCK_REALTIME through pthread_mutex_timedlock. */
#if defined(__GLIBC__) && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 30)
#define SHM_HAVE_CLOCKLOCK 1
#endif
#endif
#ifndef SHM_HAVE_CLOCKLOCK
#define SHM_HAVE_CLOCKLOCK 0
#endif

/* The mutex area in a segment is 64 bytes: the pthread_mutex_t, then a 4-byte
 * backend tag at offset 56 that no pthread_mutex_t reaches. */
#define SHM_MUTEX_AREA 64
#define SHM_MUTEX_TAG_AT 56
_Static_assert(sizeof(pthread_mutex_t) <= SHM_MUTEX_TAG_AT,
               "pthread_mutex_t must fit before the backend tag in the 64-byte mutex area");

/* Results of a lock attempt, shared with Python (_core.OK, BUSY, OWNER_DIED). */
#define SHM_OK 0
#define SHM_BUSY 1
#define SHM_OWNER_DIED 2

/* ------------------------------------------------------------------ errors */

/* shmkit.errors.LayoutError and NotOwner, looked up once per module. */
typedef struct {
    PyObject *layout_error;
    PyObject *not_owner;
    PyObject *closed;
} shm_errors;

static inline int
shm_errors_load(shm_errors *e)
{
    PyObject *mod = PyImport_ImportModule("shmkit.errors");
    if (mod == NULL) {
        return -1;
    }
    e->layout_error = PyObject_GetAttrString(mod, "LayoutError");
    e->not_owner = PyObject_GetAttrString(mod, "NotOwner");
    e->closed = PyObject_GetAttrString(mod, "Closed");
    Py_DECREF(mod);
    if (e->layout_error == NULL || e->not_owner == NULL || e->closed == NULL) {
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ views */

/* A pinned, writable view of a shared mapping (an mmap.mmap). Holding the
 * buffer keeps the mapping alive: mmap.close() raises BufferError meanwhile.
 * `inflight` counts calls that dropped the GIL while using the memory; the
 * buffer is released only when it is zero, so close() from another thread
 * never pulls memory from under a waiter. */
typedef struct {
    Py_buffer buf;
    char *base;
    Py_ssize_t len;
    int have_buf;
    int closed;
    int inflight;
} shm_view;

static inline int
shm_view_init(shm_view *v, PyObject *obj)
{
    memset(v, 0, sizeof(*v));
    if (PyObject_GetBuffer(obj, &v->buf, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    v->have_buf = 1;
    v->base = (char *)v->buf.buf;
    v->len = v->buf.len;
    return 0;
}

/* Mark closed; release the buffer now unless a wait is still using it. */
static inline void
shm_view_close(shm_view *v)
{
    v->closed = 1;
    if (v->have_buf && v->inflight == 0) {
        v->have_buf = 0;
        v->base = NULL;
        v->len = 0;
        PyBuffer_Release(&v->buf);
    }
}

/* Called (GIL held) after a wait that used the memory without the GIL. */
static inline void
shm_view_leave(shm_view *v)
{
    v->inflight--;
    if (v->closed && v->inflight == 0 && v->have_buf) {
        v->have_buf = 0;
        v->base = NULL;
        v->len = 0;
        PyBuffer_Release(&v->buf);
    }
}

/* Check that [off, off + n) lies in the view and off is `align`-aligned. */
static inline int
shm_check(const shm_errors *e, const shm_view *v, long long off, long long n, int align)
{
    if (v->closed || v->base == NULL) {
        PyErr_SetString(e->closed, "the shared mapping is closed");
        return -1;
    }
    if (off < 0 || n < 0 || off > (long long)v->len || n > (long long)v->len - off) {
        PyErr_Format(e->layout_error,
                     "offset %lld + %lld bytes is outside the %zd-byte mapping", off, n, v->len);
        return -1;
    }
    if (align > 1 && (((uintptr_t)v->base + (uintptr_t)off) % (uintptr_t)align) != 0) {
        PyErr_Format(e->layout_error, "offset %lld is not %d-byte aligned", off, align);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ atomics */

static inline uint64_t
shm_load64(const void *p)
{
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
}

static inline void
shm_store64(void *p, uint64_t x)
{
    __atomic_store_n((uint64_t *)p, x, __ATOMIC_RELEASE);
}

static inline uint32_t
shm_load32(const void *p)
{
    return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE);
}

static inline void
shm_store32(void *p, uint32_t x)
{
    __atomic_store_n((uint32_t *)p, x, __ATOMIC_RELEASE);
}

static inline uint64_t
shm_relaxed64(const void *p)
{
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
}

static inline void
shm_set_relaxed64(void *p, uint64_t x)
{
    __atomic_store_n((uint64_t *)p, x, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ time */

static inline double
shm_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void
shm_timespec_at(struct timespec *ts, clockid_t clock, double seconds_from_now)
{
    clock_gettime(clock, ts);
    long long add_ns = (long long)(seconds_from_now * 1e9);
    long long ns = (long long)ts->tv_nsec + add_ns % 1000000000LL;
    ts->tv_sec += (time_t)(add_ns / 1000000000LL) + (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
}

/* ------------------------------------------------------------------ timeouts */

/* Parse a timeout the way every blocking call does: None -> -1 (forever),
 * otherwise a real number >= 0 (bool, str, NaN and negatives are refused). */
static inline int
shm_parse_timeout(PyObject *obj, double *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = -1.0;
        return 0;
    }
    if (PyBool_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj))) {
        PyErr_Format(PyExc_TypeError, "timeout must be a number or None, not %.50s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    double t = PyFloat_AsDouble(obj);
    if (t == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(t) || t < 0) {
        PyErr_Format(PyExc_ValueError, "timeout must be >= 0 or None, not %R", obj);
        return -1;
    }
    *out = t;
    return 0;
}

/* ------------------------------------------------------------------ futex */

/* Sleep while the 32-bit word at p equals `expected`, at most `seconds`
 * (monotonic clock). Called without the GIL. Returns 0 when woken, changed or
 * interrupted (the caller re-checks its condition either way), 1 on timeout. */
static inline int
shm_futex_wait(uint32_t *p, uint32_t expected, double seconds)
{
#if SHM_HAVE_FUTEX
    struct timespec deadline;
    shm_timespec_at(&deadline, CLOCK_MONOTONIC, seconds);
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline; not
     * FUTEX_PRIVATE_FLAG: the word lives in a mapping shared between processes. */
    long rc = syscall(SYS_futex, p, FUTEX_WAIT_BITSET, expected, &deadline, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    if (rc == -1 && errno == ETIMEDOUT) {
        return 1;
    }
    return 0;
#else
    /* No futex (macOS): poll with a short sleep; callers already loop. */
    double nap = seconds < 0.001 ? seconds : 0.001;
    struct timespec ts = {(time_t)nap, (long)((nap - (double)(time_t)nap) * 1e9)};
    if (__atomic_load_n(p, __ATOMIC_ACQUIRE) != expected) {
        return 0;
    }
    nanosleep(&ts, NULL);
    return (__atomic_load_n(p, __ATOMIC_ACQUIRE) == expected && nap >= seconds) ? 1 : 0;
#endif
}

/* Wake up to n sleepers on the word at p (every process that maps it). */
static inline long
shm_futex_wake(uint32_t *p, int n)
{
#if SHM_HAVE_FUTEX
    long rc = syscall(SYS_futex, p, FUTEX_WAKE, n, NULL, NULL, 0);
    return rc < 0 ? 0 : rc;
#else
    (void)p;
    (void)n;
    return 0;
#endif
}

/* ------------------------------------------------------------------ mutex */

/* Initialise a robust process-shared mutex at m (creator only, before READY).
 * Returns 0 or an errno value; every call's result is checked. */
static inline int
shm_mutex_init(pthread_mutex_t *m)
{
#if SHM_HAVE_ROBUST
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc) {
        return rc;
    }
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0) {
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    }
    if (rc == 0) {
        rc = pthread_mutex_init(m, &attr);
    }
    pthread_mutexattr_destroy(&attr);
    return rc;
#else
    (void)m;
    return ENOSYS;
#endif
}

/* After EOWNERDEAD: make the mutex consistent (we hold it) and say so. */
static inline int
shm_mutex_after(pthread_mutex_t *m, int rc)
{
    if (rc == 0) {
        return SHM_OK;
    }
    if (rc == EBUSY || rc == ETIMEDOUT || rc == EINTR || rc == EAGAIN) {
        return SHM_BUSY;
    }
#if SHM_HAVE_ROBUST
    if (rc == EOWNERDEAD) {
        int c = pthread_mutex_consistent(m);
        if (c) {
            pthread_mutex_unlock(m);
            return -c;
        }
        return SHM_OWNER_DIED;
    }
#endif
    return -rc;
}

/* OK, BUSY, OWNER_DIED (held, made consistent) or -errno. Never blocks. */
static inline int
shm_mutex_trylock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_trylock(m);
    if (rc == 0) {
        return SHM_OK;
    }
    return shm_mutex_after(m, rc);
}

/* Block up to `seconds` (monotonic where glibc allows). Call without the GIL. */
static inline int
shm_mutex_timedlock(pthread_mutex_t *m, double seconds)
{
    struct timespec ts;
#if SHM_HAVE_CLOCKLOCK
    shm_timespec_at(&ts, CLOCK_MONOTONIC, seconds);
    int rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
#else
    shm_timespec_at(&ts, CLOCK_REALTIME, seconds);
    int rc = pthread_mutex_timedlock(m, &ts);
#endif
    return shm_mutex_after(m, rc);
}

/* ------------------------------------------------------------------ spin */

/* A gap this long between two looks of a spin: the spinner was descheduled.
 * The machine has fewer free cores than runnable threads, so spinning on
 * would only take the core the peer needs. */
#define SHM_PREEMPTED 50e-6

/* Spin with `pauses` pause instructions between looks (1 to 32) until
 * ready(arg): 1 ready; 0 once `secs` have passed and linger(arg, now) (NULL:
 * never) gives no reason to go on; -1 when a gap between two looks showed
 * this thread was descheduled (one last look decides). The clock is read
 * every 32 pauses, whatever their spacing. Every bounded spin of the core
 * waits this way. */
static inline int
shm_spin(int (*ready)(void *), int (*linger)(void *, double), void *arg, double secs, int pauses)
{
    double last = shm_monotonic(), end = last + secs;
    for (;;) {
        for (int k = 0; k < 32; k += pauses) {
            if (ready(arg)) {
                return 1;
            }
            for (int j = 0; j < pauses; j++) {
                SHM_PAUSE();
            }
        }
        double now = shm_monotonic();
        if (now - last > SHM_PREEMPTED) {
            return ready(arg) ? 1 : -1;
        }
        if (now >= end && (linger == NULL || !linger(arg, now))) {
            return 0;
        }
        last = now;
    }
}

/* Try the lock up to `tries` times, `pauses` pause instructions apart;
 * OK/OWNER_DIED/BUSY/-errno. */
static inline int
shm_mutex_spin(pthread_mutex_t *m, int tries, int pauses)
{
    for (int i = 0; i < tries; i++) {
        int got = shm_mutex_trylock(m);
        if (got != SHM_BUSY) {
            return got;
        }
        for (int k = 0; k < pauses; k++) {
            SHM_PAUSE();
        }
    }
    return SHM_BUSY;
}

/* Raise the Python error for a negative mutex result. Returns NULL. */
static inline PyObject *
shm_mutex_error(const shm_errors *e, int got)
{
    int rc = -got;
#if SHM_HAVE_ROBUST
    if (rc == ENOTRECOVERABLE) {
        PyErr_SetString(e->layout_error,
                        "shared mutex is not recoverable (corrupt or poisoned segment)");
        return NULL;
    }
#endif
    PyErr_Format(e->layout_error, "shared mutex error: %s", strerror(rc));
    return NULL;
}

/* ------------------------------------------------------------------ crash points */

/* SHMKIT_CRASH_AT=name makes the process SIGKILL itself at that point, after
 * SHMKIT_CRASH_AFTER passes; SHMKIT_STOP_AT=name makes it SIGSTOP itself there
 * the first time (a test then acts while it is stopped, and SIGCONTs it).
 * Tests only: one branch on a static when unarmed. */
static const char *shm_crash_at = NULL;
static long shm_crash_after = 0;
static const char *shm_stop_at = NULL;

static inline void
shm_crash_load(void)
{
    const char *at = getenv("SHMKIT_CRASH_AT");
    shm_crash_at = (at && *at) ? at : NULL;
    const char *after = getenv("SHMKIT_CRASH_AFTER");
    shm_crash_after = after ? strtol(after, NULL, 10) : 0;
    const char *stop = getenv("SHMKIT_STOP_AT");
    shm_stop_at = (stop && *stop) ? stop : NULL;
}

static inline void
shm_crash(const char *name)
{
    if (__builtin_expect(shm_stop_at != NULL, 0) && strcmp(name, shm_stop_at) == 0) {
        shm_stop_at = NULL;
        raise(SIGSTOP);
    }
    if (__builtin_expect(shm_crash_at != NULL, 0) && strcmp(name, shm_crash_at) == 0) {
        if (shm_crash_after > 0) {
            shm_crash_after--;
            return;
        }
        kill(getpid(), SIGKILL);
    }
}

/* ------------------------------------------------------------------ copy */

/* Copies at least SHM_NT_MIN bytes use non-temporal stores on x86-64 (they
 * skip the cache, which a large frame would only evict); smaller ones use
 * memcpy. */
#define SHM_NT_MIN ((size_t)1 << 22)
#define SHM_FENCE_MIN ((size_t)1 << 14)

/* Copy n bytes to shared memory. Any non-temporal stores are fenced (sfence)
 * before returning, so a release store that follows publishes them. */
static inline void
shm_copy(void *dst, const void *src, size_t n)
{
#if defined(__x86_64__) && defined(__SSE2__)
    if (n >= SHM_NT_MIN) {
        char *d = (char *)dst;
        const char *s = (const char *)src;
        size_t head = (16 - ((uintptr_t)d & 15)) & 15;
        memcpy(d, s, head);
        d += head;
        s += head;
        n -= head;
        size_t blocks = n / 64;
        for (size_t i = 0; i < blocks; i++) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + 0));
            __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
            __m128i dd = _mm_loadu_si128((const __m128i *)(s + 48));
            _mm_stream_si128((__m128i *)(d + 0), a);
            _mm_stream_si128((__m128i *)(d + 16), b);
            _mm_stream_si128((__m128i *)(d + 32), c);
            _mm_stream_si128((__m128i *)(d + 48), dd);
            s += 64;
            d += 64;
        }
        memcpy(d, s, n - blocks * 64);
        /* sfence: non-temporal stores are weakly ordered even on x86; this
         * orders them before the release store that publishes the copy. */
        _mm_sfence();
        return;
    }
#endif
    memcpy(dst, src, n);
#if defined(__x86_64__) && defined(__SSE2__)
    /* glibc's memcpy switches to non-temporal stores above a size it picks
     * from the cache sizes; fence large copies so those are ordered too. */
    if (n >= SHM_FENCE_MIN) {
        _mm_sfence();
    }
#endif
}

#endif /* SHMKIT_SHM_H */
