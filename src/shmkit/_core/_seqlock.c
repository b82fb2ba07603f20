/* shmkit._core._seqlock — the one seqlock that Latest and Broadcast share.
 *
 *   Slot        a sequence word, a length, a CRC, then the payload (see
 *               "Slot format" below). Message / version n is whole in a slot
 *               when its sequence reads 2n+2; 2n+1 means a writer is in it.
 *   LatestBase  base class of shmkit.Latest: set / get / get_into / wait_newer
 *               as single C calls (the writer's robust mutex is taken and
 *               released inside set, so no signal handler can split it).
 *   Ring        the hot paths of shmkit.Broadcast: publish, loan + commit,
 *               recv in three modes, view validation, futex waits.
 *
 * Slot format (u64 little-endian words at a 64-aligned slot start):
 *      0  seq     0 never written; 2n+1 while n is written; 2n+2 once n is whole
 *      8  length  payload bytes (never above the slot's capacity: checked here)
 *     16  crc     CRC32 of the payload seeded with n & 0xffffffff (checksum mode)
 *     64  payload
 *
 * Writer (sl_begin / sl_end):
 *   seq = 2n+1 (relaxed); release fence  -- orders the odd seq before every
 *                                           payload store; pairs with the
 *                                           reader's acquire fence
 *   length, payload, crc (plain stores; large copies end with sfence)
 *   seq = 2n+2 (release)                  -- pairs with the reader's first load
 * Reader (sl_read / sl_still):
 *   s1 = seq (acquire); s1 == 2n+2 or give up; length <= capacity;
 *   copy; acquire fence; s2 = seq (relaxed); s1 == s2 -> the copy is message n.
 * If a writer entered the slot during the copy, its odd store precedes (in
 * the release fence's order) every payload byte the reader may have seen, so
 * the re-load cannot return 2n+2. The same code is correct on x86-64 and
 * arm64; copies of SHM_FENCE_MIN bytes or more add a full fence on each side
 * (x86 non-temporal and string stores are not ordered like plain ones).
 * The CRC is an integrity option only, never needed for correctness.
 *
 * Shared memory is hostile: every word read from it that becomes an index,
 * an offset or a length is bounded before use; a bad one raises LayoutError
 * or makes the read retry. Nothing here reads or writes outside the mapping.
 */
#include "shm.h"

#include <fcntl.h>
#include <zlib.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shmkit's layouts are little-endian; futex words are the low half of u64 counters"
#endif

static shm_errors E;
static PyObject *Empty;
static PyObject *MessageTooLarge;

/* Copies of at least this many bytes run with the GIL released. */
#define SL_NOGIL ((size_t)1 << 18)
/* Message numbers / versions stay below this; larger is a corrupt word. */
#define SL_MAX_SEQ ((uint64_t)1 << 62)
/* Bounded spin before sleeping on a futex (seconds): Latest's fixed one and
 * the base of a Ring's adaptive one (see sl_spin / sl_adapt). */
#define SL_SPIN 20e-6
/* A Ring waiter's spin grows to at most this. Not the Queue's 1 ms: a ring's
 * waiters are often several per process and per frame (a bridge's threads, a
 * ping and its echo), and on 2 cores spins of up to 1 ms for hand-offs ~600 µs
 * apart took the cores the peers needed (bridge round trip 740-860 µs against
 * 583 µs with the 20 µs spin; 588 µs with this cap), while 250 µs still
 * covers a 1 MiB frame's hand-off (~60-90 µs apart). */
#define SL_SPIN_MAX 250e-6

#define SL_SEQ 0
#define SL_LEN 8
#define SL_CRC 16
#define SL_HEAD 64

/* ================================================================ test hooks */

/* SHMKIT_HOOK_AT=name pauses a reader in the middle of its copy (tests only):
 * it writes the line "hook" to fd SHMKIT_HOOK_FD (if set), then reads one byte from
 * fd SHMKIT_HOOK_WAIT_FD (if set) or sleeps SHMKIT_HOOK_MS milliseconds. A
 * test overwrites the slot meanwhile and checks the reader never returns it. */
static const char *hook_at = NULL;
static int hook_fd = -1, hook_wait_fd = -1;
static long hook_ms = 0;

static void
hook_load(void)
{
    const char *at = getenv("SHMKIT_HOOK_AT");
    hook_at = (at && *at) ? at : NULL;
    const char *s = getenv("SHMKIT_HOOK_FD");
    hook_fd = s ? (int)strtol(s, NULL, 10) : -1;
    s = getenv("SHMKIT_HOOK_WAIT_FD");
    hook_wait_fd = s ? (int)strtol(s, NULL, 10) : -1;
    s = getenv("SHMKIT_HOOK_MS");
    hook_ms = s ? strtol(s, NULL, 10) : 0;
}

static inline int
hook_armed(const char *name)
{
    return __builtin_expect(hook_at != NULL, 0) && strcmp(name, hook_at) == 0;
}

/* Called with the GIL held and the view's inflight raised by the caller. */
static void
hook_pause(void)
{
    Py_BEGIN_ALLOW_THREADS
    if (hook_fd >= 0) {
        ssize_t w = write(hook_fd, "hook\n", 5);
        (void)w;
    }
    if (hook_wait_fd >= 0) {
        char c;
        ssize_t r = read(hook_wait_fd, &c, 1);
        (void)r;
    }
    else if (hook_ms > 0) {
        struct timespec ts = {hook_ms / 1000, (hook_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    Py_END_ALLOW_THREADS
}

/* ================================================================ waits */

/* True once the word moved: a u64 above `val`, or a u32 other than `val`. */
static inline int
sl_moved(const char *word, int is32, uint64_t val)
{
    /* acquire: pairs with the release store / RMW that moved the word */
    return is32 ? __atomic_load_n((const uint32_t *)word, __ATOMIC_ACQUIRE) != (uint32_t)val
                : shm_load64(word) > val;
}

/* A word to watch: sl_moved's arguments for shm_spin. */
typedef struct {
    const char *word;
    int is32;
    uint64_t val;
} sl_watch;

static int
sl_watch_moved(void *arg)
{
    sl_watch *w = arg;
    return sl_moved(w->word, w->is32, w->val);
}

/* Spin up to `secs` for the word to move (shm_spin): 1 moved, 0 not within
 * secs, -1 this thread was descheduled (the caller sleeps instead). */
static int
sl_spin(const char *word, int is32, uint64_t val, double secs)
{
    sl_watch w = {word, is32, val};
    return shm_spin(sl_watch_moved, NULL, &w, secs, 1);
}

/* A waiter's adaptive spin budget (seconds). */
typedef struct {
    double budget;
} sl_spinner;

static void
sl_spinner_init(sl_spinner *sp)
{
    sp->budget = SL_SPIN;
}

/* The next spin budget after a wait (the Queue's policy). A wait that ended
 * in a futex sleep no longer than SL_SPIN_MAX means the peer answers at a
 * steady pace just past the budget: double it, so the next hand-off is
 * caught spinning instead of paying a wake-up (tens of µs). A longer wait
 * (an idle stream) resets it to the base, and so does a spinner that was
 * descheduled mid-spin (fewer free cores than runnable threads: there a long
 * spin only takes CPU time the peer needs). Keeping it at the base for a
 * while after such a sign (100 ms, or 10 ms) made no clear difference beside two
 * CPU-bound processes, and on the idle VM, whose vCPUs are now and then
 * descheduled by the host, it made a 1 MiB frame reader sleep on 10-75 % of
 * its frames instead of 1-3 %: so no such memory. */
static void
sl_adapt(sl_spinner *sp, int slept, int preempted, double waited)
{
    if (preempted || waited > SL_SPIN_MAX) {
        sp->budget = SL_SPIN;
    }
    else if (slept) {
        sp->budget = sp->budget * 2 < SL_SPIN_MAX ? sp->budget * 2 : SL_SPIN_MAX;
    }
}

/* ================================================================ the seqlock */

static inline uint64_t
sl_seq(const char *slot)
{
    /* acquire: pairs with the release store of 2n+2 in sl_end() */
    return shm_load64(slot + SL_SEQ);
}

/* Enter a slot for message n (the writer owns the slot: one writer at a time). */
static inline void
sl_begin(char *slot, uint64_t n, size_t nbytes)
{
    shm_set_relaxed64(slot + SL_SEQ, 2 * n + 1);
    /* release fence: the odd seq above is ordered before every payload store
     * below; pairs with the acquire fence in sl_still(). */
    __atomic_thread_fence(__ATOMIC_RELEASE);
#if defined(__x86_64__) && defined(__SSE2__)
    /* Non-temporal and string stores may pass earlier plain stores on x86. */
    if (nbytes >= SHM_FENCE_MIN) {
        _mm_sfence();
    }
#else
    (void)nbytes;
#endif
}

/* CRC32 (zlib's) of a payload, seeded with the low 32 bits of its number. */
static uint64_t
sl_crc(const char *payload, uint64_t len, uint64_t n)
{
    uLong c = (uLong)(n & 0xffffffffu);
    const Bytef *p = (const Bytef *)payload;
    size_t left = (size_t)len;
    while (left) {
        uInt part = left > (1u << 30) ? (1u << 30) : (uInt)left;
        c = crc32(c, p, part);
        p += part;
        left -= part;
    }
    return (uint64_t)c;
}

/* Seal message n of `len` bytes (payload already copied and fenced). */
static inline void
sl_end(char *slot, uint64_t n, uint64_t len, int checksum)
{
    shm_set_relaxed64(slot + SL_LEN, len);
    if (checksum) {
        shm_set_relaxed64(slot + SL_CRC, sl_crc(slot + SL_HEAD, len, n));
    }
    /* release: publishes length, crc and payload; pairs with sl_seq() */
    shm_store64(slot + SL_SEQ, 2 * n + 2);
}

/* After a copy out of a slot: does it still hold the sequence `seq`? */
static inline int
sl_still(const char *slot, uint64_t seq, size_t nbytes)
{
    /* acquire fence: the copy's loads complete before the re-load below;
     * pairs with the release fence in sl_begin(). */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (nbytes >= SHM_FENCE_MIN) {
        /* string loads of a large copy: a full fence on every CPU */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    return shm_relaxed64(slot + SL_SEQ) == seq;
}

static int
sl_crc_ok(const char *payload, uint64_t len, uint64_t n, uint64_t want)
{
    return sl_crc(payload, len, n) == want;
}

/* Copy into a slot. `crash` (or NULL) is the crash point between the halves.
 * Large copies drop the GIL: the caller raised the view's inflight count. */
static void
sl_copy_in(char *dst, const char *src, size_t n, const char *crash)
{
    if (crash != NULL && __builtin_expect(shm_crash_at != NULL || shm_stop_at != NULL, 0)) {
        size_t half = n / 2;
        memcpy(dst, src, half);
        shm_crash(crash);
        shm_copy(dst + half, src + half, n - half);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        return;
    }
    if (n >= SL_NOGIL) {
        Py_BEGIN_ALLOW_THREADS
        shm_copy(dst, src, n);
        Py_END_ALLOW_THREADS
    }
    else {
        shm_copy(dst, src, n);
    }
}

/* Copy out of a slot; `hook` names the test hook point in the middle. */
static void
sl_copy_out(char *dst, const char *src, size_t n, const char *hook)
{
    if (hook != NULL && hook_armed(hook)) {
        size_t half = n / 2;
        memcpy(dst, src, half);
        hook_pause();
        memcpy(dst + half, src + half, n - half);
        return;
    }
    if (n >= SL_NOGIL) {
        Py_BEGIN_ALLOW_THREADS
        memcpy(dst, src, n);
        Py_END_ALLOW_THREADS
    }
    else {
        memcpy(dst, src, n);
    }
}

/* Raise LayoutError/Closed unless the view is usable. */
static int
view_ready(shm_view *v)
{
    if (v->closed || v->base == NULL) {
        PyErr_SetString(E.closed, "the shared mapping is closed");
        return -1;
    }
    return 0;
}

/* A view that may be read-only (a Latest opened readonly). */
static int
view_init_any(shm_view *v, PyObject *obj, int *readonly)
{
    memset(v, 0, sizeof(*v));
    if (PyObject_GetBuffer(obj, &v->buf, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        if (PyObject_GetBuffer(obj, &v->buf, PyBUF_SIMPLE) < 0) {
            return -1;
        }
        *readonly = 1;
    }
    else {
        *readonly = 0;
    }
    v->have_buf = 1;
    v->base = (char *)v->buf.buf;
    v->len = v->buf.len;
    return 0;
}

/* A C-contiguous source buffer, or TypeError. */
static int
get_src(PyObject *obj, Py_buffer *b, const char *what)
{
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            return -1;
        }
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s must be a C-contiguous buffer (use numpy.ascontiguousarray or bytes())",
                     what);
        return -1;
    }
    return 0;
}

/* Wait on a futex word without the GIL (view pinned meanwhile). */
static int
view_futex_wait(shm_view *v, uint32_t *word, uint32_t expected, double seconds)
{
    int rc;
    v->inflight++;
    Py_BEGIN_ALLOW_THREADS
    rc = shm_futex_wait(word, expected, seconds);
    Py_END_ALLOW_THREADS
    shm_view_leave(v);
    return rc;
}

static int
parse_u64(PyObject *o, uint64_t *out)
{
    unsigned long long x = PyLong_AsUnsignedLongLong(o);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint64_t)x;
    return 0;
}

/* ================================================================ LatestBase */

/* Latest body (offsets from body_off; layout version 2, drawn in
 * shmkit/_shm/latest_slot.py):
 *      0  writer mutex (64)   robust pthread mutex
 *     64  version             newest published version; low 32 bits: futex word
 *     72  writer_deaths
 *     80  in_set              flock backend: 1 from lock to unlock
 *     88  waiters (u32)       readers asleep in wait_newer
 *    128  writer table
 *      S  slots, nslots x stride; version v lives in slot v % nslots */
#define LT_VERSION 64
#define LT_DEATHS 72
#define LT_IN_SET 80
#define LT_WAITERS 88

#define LTF_CHECKSUM 1
#define LTF_ARRAY 2
#define LTF_FLOCK 4

typedef struct {
    PyObject_HEAD
    shm_view v;
    int attached;
    int readonly;
    int fast_set; /* writer entry claimed, pthread backend, bytes mode */
    uint32_t flags;
    Py_ssize_t body;
    uint64_t nslots, size, slots_off, stride;
    uint64_t retries;
    uint64_t bad_v; /* last version that failed its checksum with a stable seq */
    int bad_count;
    PyObject *name;
} LatestObject;

static int
lt_ready(LatestObject *self)
{
    if (!self->attached) {
        PyErr_SetString(E.closed, "latest handle is not attached");
        return -1;
    }
    return view_ready(&self->v);
}

#define LT_AT(self, off) ((self)->v.base + (self)->body + (off))

static inline char *
lt_slot(LatestObject *self, uint64_t v)
{
    return LT_AT(self, self->slots_off + (v % self->nslots) * self->stride);
}

/* _c_attach(buffer, name, body_off, nslots, size, slots_off, stride, flags) */
static PyObject *
Latest_attach(LatestObject *self, PyObject *args)
{
    PyObject *buf, *name;
    long long body, nslots, size, slots_off, stride;
    unsigned int flags;
    if (!PyArg_ParseTuple(args, "OULLLLLI:_c_attach", &buf, &name, &body, &nslots, &size,
                          &slots_off, &stride, &flags)) {
        return NULL;
    }
    if (self->attached) {
        PyErr_SetString(PyExc_RuntimeError, "already attached");
        return NULL;
    }
    if (nslots < 2 || size < 0 || stride < SL_HEAD + size || stride % 64 || slots_off < 128 ||
        slots_off % 64 || body % 64) {
        PyErr_SetString(E.layout_error, "latest: inconsistent slot geometry");
        return NULL;
    }
    if (view_init_any(&self->v, buf, &self->readonly)) {
        return NULL;
    }
    if (nslots > (LLONG_MAX - slots_off) / stride ||
        shm_check(&E, &self->v, body, slots_off + nslots * stride, 64)) {
        shm_view_close(&self->v);
        return NULL;
    }
    self->body = (Py_ssize_t)body;
    self->nslots = (uint64_t)nslots;
    self->size = (uint64_t)size;
    self->slots_off = (uint64_t)slots_off;
    self->stride = (uint64_t)stride;
    self->flags = flags;
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
    self->attached = 1;
    Py_RETURN_NONE;
}

static PyObject *
Latest_detach(LatestObject *self, PyObject *Py_UNUSED(ignored))
{
    self->fast_set = 0;
    if (self->attached) {
        shm_view_close(&self->v);
    }
    Py_RETURN_NONE;
}

static PyObject *
Latest_set_fast(LatestObject *self, PyObject *arg)
{
    self->fast_set = PyObject_IsTrue(arg) == 1 && !self->readonly &&
                     !(self->flags & (LTF_ARRAY | LTF_FLOCK));
    Py_RETURN_NONE;
}

/* Write `src` as version load(version)+1; the caller holds the writer mutex.
 * Returns the version. Crash points mark every step. */
static uint64_t
lt_write(LatestObject *self, const char *src, size_t n, int owner_died)
{
    char *deaths = LT_AT(self, LT_DEATHS);
    char *in_set = LT_AT(self, LT_IN_SET);
    char *ver = LT_AT(self, LT_VERSION);
    if (owner_died) {
        /* A writer died inside set. Nothing to repair: it never published its
         * version, or finished; its slot is simply rewritten. */
        shm_set_relaxed64(deaths, shm_relaxed64(deaths) + 1);
    }
    if (self->flags & LTF_FLOCK) {
        /* flock has no EOWNERDEAD: a word set from lock to unlock tells. */
        if (shm_relaxed64(in_set)) {
            shm_set_relaxed64(deaths, shm_relaxed64(deaths) + 1);
        }
        shm_set_relaxed64(in_set, 1);
    }
    /* relaxed: the writer mutex orders writers; readers load it with acquire */
    uint64_t v = (shm_relaxed64(ver) % SL_MAX_SEQ) + 1;
    char *slot = lt_slot(self, v);
    sl_begin(slot, v, n);
    sl_copy_in(slot + SL_HEAD, src, n, "latest.set.copying");
    shm_crash("latest.set.copied");
    sl_end(slot, v, n, self->flags & LTF_CHECKSUM);
    shm_crash("latest.set.sealed");
    /* release: pairs with the acquire load of version in lt_read_once() */
    shm_store64(ver, v);
    shm_crash("latest.set.published");
    if (self->flags & LTF_FLOCK) {
        shm_set_relaxed64(in_set, 0);
    }
    return v;
}

/* Wake readers asleep in wait_newer, if any (Dekker with lt_wait). */
static void
lt_wake(LatestObject *self)
{
    /* seq_cst fence: the version store is visible before we read waiters;
     * pairs with the fetch-add + re-check in Latest_wait(). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint32_t *w = (uint32_t *)LT_AT(self, LT_WAITERS);
    if (__atomic_load_n(w, __ATOMIC_RELAXED) != 0) {
        shm_futex_wake((uint32_t *)LT_AT(self, LT_VERSION), INT_MAX);
    }
}

static int
lt_check_len(LatestObject *self, Py_ssize_t n)
{
    if ((uint64_t)n > self->size) {
        PyErr_Format(MessageTooLarge, "latest %R: %zd bytes > size %llu", self->name, n,
                     (unsigned long long)self->size);
        return -1;
    }
    return 0;
}

/* set(data, *, timeout=None) -> version: the whole fast path in one call.
 * Falls back to the Python _set_slow(data, timeout) when the mutex is busy,
 * on first use, for arrays and for the flock backend. */
static PyObject *
Latest_set(LatestObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data, *timeout = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1 || nkw > 1 ||
        (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0)) {
        PyErr_SetString(PyExc_TypeError, "set(data, *, timeout=None)");
        return NULL;
    }
    data = args[0];
    if (nkw) {
        timeout = args[1];
    }
    double t;
    if (shm_parse_timeout(timeout, &t)) {
        return NULL; /* a bad timeout is refused before anything is written */
    }
    if (!self->fast_set || lt_ready(self)) {
        PyErr_Clear();
        return PyObject_CallMethod((PyObject *)self, "_set_slow", "OO", data, timeout);
    }
    Py_buffer src;
    if (get_src(data, &src, "a Latest value")) {
        return NULL;
    }
    /* (a buffer export may run Python code: check the mapping again) */
    if (lt_check_len(self, src.len) || lt_ready(self)) {
        PyBuffer_Release(&src);
        return NULL;
    }
    pthread_mutex_t *m = (pthread_mutex_t *)LT_AT(self, 0);
    int got = shm_mutex_trylock(m);
    if (got == SHM_BUSY) {
        got = shm_mutex_spin(m, 64, 16);
    }
    if (got == SHM_BUSY) {
        PyBuffer_Release(&src);
        return PyObject_CallMethod((PyObject *)self, "_set_slow", "OO", data, timeout);
    }
    if (got < 0) {
        PyBuffer_Release(&src);
        return shm_mutex_error(&E, got);
    }
    self->v.inflight++; /* a large copy drops the GIL: keep the mapping */
    uint64_t v = lt_write(self, src.buf, (size_t)src.len, got == SHM_OWNER_DIED);
    pthread_mutex_unlock(m);
    lt_wake(self);
    shm_view_leave(&self->v);
    PyBuffer_Release(&src);
    return PyLong_FromUnsignedLongLong(v);
}

/* _c_write_locked(data, owner_died) -> version: the caller holds the writer
 * mutex through a _core.Mutex (slow path, flock backend, first set). */
static PyObject *
Latest_write_locked(LatestObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_c_write_locked(data, owner_died)");
        return NULL;
    }
    if (lt_ready(self)) {
        return NULL;
    }
    if (self->readonly) {
        PyErr_SetString(PyExc_PermissionError, "latest is open readonly");
        return NULL;
    }
    int died = PyObject_IsTrue(args[1]);
    if (died < 0) {
        return NULL;
    }
    Py_buffer src;
    if (get_src(args[0], &src, "a Latest value")) {
        return NULL;
    }
    if (lt_check_len(self, src.len) || lt_ready(self)) {
        PyBuffer_Release(&src);
        return NULL;
    }
    self->v.inflight++;
    uint64_t v = lt_write(self, src.buf, (size_t)src.len, died);
    shm_view_leave(&self->v);
    PyBuffer_Release(&src);
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *
Latest_wake(LatestObject *self, PyObject *Py_UNUSED(ignored))
{
    if (lt_ready(self)) {
        return NULL;
    }
    lt_wake(self);
    Py_RETURN_NONE;
}

/* Read outcomes. */
#define RD_OK 0
#define RD_EMPTY 1
#define RD_RETRY 2
#define RD_ERROR (-1)

/* One attempt to read the newest value. On RD_OK *out holds a new bytes
 * object (dst == NULL) or the value was copied into dst (*nout its length). */
static int
lt_read_once(LatestObject *self, char *dst, Py_ssize_t dstlen, PyObject **out, uint64_t *vout,
             uint64_t *nout)
{
    /* acquire: pairs with the release store of version in lt_write() */
    uint64_t v = shm_load64(LT_AT(self, LT_VERSION));
    if (v == 0) {
        return RD_EMPTY;
    }
    if (v >= SL_MAX_SEQ) {
        PyErr_Format(E.layout_error, "latest %R: version word %llu is corrupt", self->name,
                     (unsigned long long)v);
        return RD_ERROR;
    }
    char *slot = lt_slot(self, v);
    uint64_t want = 2 * v + 2;
    if (sl_seq(slot) != want) {
        return RD_RETRY; /* a writer is nslots - 1 versions ahead, in this slot */
    }
    uint64_t n = shm_relaxed64(slot + SL_LEN);
    if (self->flags & LTF_ARRAY) {
        n = self->size;
    }
    if (n > self->size) {
        if (sl_still(slot, want, 0)) {
            PyErr_Format(E.layout_error, "latest %R: version %llu claims %llu bytes in a %llu-byte slot",
                         self->name, (unsigned long long)v, (unsigned long long)n,
                         (unsigned long long)self->size);
            return RD_ERROR;
        }
        return RD_RETRY;
    }
    char *target;
    PyObject *bytes = NULL;
    if (dst == NULL) {
        bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (bytes == NULL) {
            return RD_ERROR;
        }
        target = PyBytes_AS_STRING(bytes);
    }
    else {
        if ((Py_ssize_t)n > dstlen) {
            if (!sl_still(slot, want, 0)) {
                return RD_RETRY;
            }
            PyErr_Format(PyExc_ValueError, "the value (%llu bytes) does not fit in %zd bytes",
                         (unsigned long long)n, dstlen);
            return RD_ERROR;
        }
        target = dst;
    }
    uint64_t crc = shm_relaxed64(slot + SL_CRC);
    sl_copy_out(target, slot + SL_HEAD, (size_t)n, "latest.get.copying");
    shm_crash("latest.get.copied");
    if (!sl_still(slot, want, (size_t)n)) {
        Py_XDECREF(bytes);
        return RD_RETRY;
    }
    if ((self->flags & LTF_CHECKSUM) && !sl_crc_ok(target, n, v, crc)) {
        Py_XDECREF(bytes);
        /* the seq was stable: a reordering (impossible here) or corruption */
        if (self->bad_v == v && ++self->bad_count >= 3) {
            PyErr_Format(E.layout_error,
                         "latest %R: version %llu fails its checksum; the segment is corrupt",
                         self->name, (unsigned long long)v);
            return RD_ERROR;
        }
        if (self->bad_v != v) {
            self->bad_v = v;
            self->bad_count = 1;
        }
        return RD_RETRY;
    }
    *out = bytes;
    *vout = v;
    *nout = n;
    return RD_OK;
}

/* Up to `tries` attempts, pausing between them. */
static int
lt_read(LatestObject *self, int tries, char *dst, Py_ssize_t dstlen, PyObject **out,
        uint64_t *vout, uint64_t *nout)
{
    self->v.inflight++;
    int rc = RD_RETRY;
    for (int t = 0; t < tries; t++) {
        rc = lt_read_once(self, dst, dstlen, out, vout, nout);
        if (rc != RD_RETRY || self->v.closed) {
            break;
        }
        self->retries++;
        for (int k = 0; k < 32; k++) {
            SHM_PAUSE();
        }
    }
    shm_view_leave(&self->v);
    if (rc == RD_EMPTY) {
        PyErr_Format(Empty, "latest %R has no value yet", self->name);
        return RD_ERROR;
    }
    return rc;
}

/* get(*, timeout=None): the newest value as bytes; arrays and retries past
 * the first few go to the Python _get_slow(timeout). */
static PyObject *
Latest_get(LatestObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 0 || nkw > 1 ||
        (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0)) {
        PyErr_SetString(PyExc_TypeError, "get(*, timeout=None)");
        return NULL;
    }
    if (nkw) {
        timeout = args[0];
    }
    double t;
    if (shm_parse_timeout(timeout, &t) || lt_ready(self)) {
        return NULL; /* a bad timeout is refused before anything is read */
    }
    if (!(self->flags & LTF_ARRAY)) {
        PyObject *out = NULL;
        uint64_t v, n;
        int rc = lt_read(self, 4, NULL, 0, &out, &v, &n);
        if (rc == RD_OK) {
            return out;
        }
        if (rc == RD_ERROR) {
            return NULL;
        }
    }
    return PyObject_CallMethod((PyObject *)self, "_get_slow", "O", timeout);
}

/* _c_read(tries) -> (version, bytes) | None (no stable value in `tries`). */
static PyObject *
Latest_read(LatestObject *self, PyObject *arg)
{
    int tries = (int)PyLong_AsLong(arg);
    if (tries == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (lt_ready(self)) {
        return NULL;
    }
    PyObject *out = NULL;
    uint64_t v, n;
    int rc = lt_read(self, tries, NULL, 0, &out, &v, &n);
    if (rc == RD_ERROR) {
        return NULL;
    }
    if (rc != RD_OK) {
        Py_RETURN_NONE;
    }
    PyObject *r = Py_BuildValue("(KN)", (unsigned long long)v, out);
    return r;
}

/* _c_read_into(buffer, tries) -> (version, nbytes) | None. */
static PyObject *
Latest_read_into(LatestObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_c_read_into(buffer, tries)");
        return NULL;
    }
    int tries = (int)PyLong_AsLong(args[1]);
    if (tries == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (lt_ready(self)) {
        return NULL;
    }
    Py_buffer dst;
    if (PyObject_GetBuffer(args[0], &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    PyObject *out = NULL;
    uint64_t v = 0, n = 0;
    int rc = lt_read(self, tries, dst.buf, dst.len, &out, &v, &n);
    PyBuffer_Release(&dst);
    if (rc == RD_ERROR) {
        return NULL;
    }
    if (rc != RD_OK) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(KK)", (unsigned long long)v, (unsigned long long)n);
}

static PyObject *
Latest_version(LatestObject *self, PyObject *Py_UNUSED(ignored))
{
    if (lt_ready(self)) {
        return NULL;
    }
    /* acquire: pairs with the release store in lt_write() */
    return PyLong_FromUnsignedLongLong(shm_load64(LT_AT(self, LT_VERSION)));
}

/* _c_wait(version, seconds, spin) -> newest version if above `version`, else 0.
 * Spins (bounded, with pause) when asked, then sleeps on the version's futex
 * word for at most `seconds` (GIL released). A read-only handle cannot
 * register as a waiter, so it naps at most 1 ms (it polls). */
static PyObject *
Latest_wait(LatestObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t want;
    double seconds;
    if (nargs != 3 || parse_u64(args[0], &want)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "_c_wait(version, seconds, spin)");
        }
        return NULL;
    }
    seconds = PyFloat_AsDouble(args[1]);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    int spin = PyObject_IsTrue(args[2]);
    if (lt_ready(self)) {
        return NULL;
    }
    char *ver = LT_AT(self, LT_VERSION);
    uint64_t cur = shm_load64(ver);
    if (spin && cur <= want) {
        sl_spin(ver, 0, want, SL_SPIN);
        cur = shm_load64(ver);
    }
    if (cur > want) {
        return PyLong_FromUnsignedLongLong(cur);
    }
    if (self->readonly) {
        view_futex_wait(&self->v, (uint32_t *)ver, (uint32_t)cur, seconds < 1e-3 ? seconds : 1e-3);
    }
    else {
        uint32_t *w = (uint32_t *)LT_AT(self, LT_WAITERS);
        /* seq_cst RMW, then re-check: pairs with the fence in lt_wake() */
        __atomic_fetch_add(w, 1, __ATOMIC_SEQ_CST);
        cur = __atomic_load_n((uint64_t *)ver, __ATOMIC_SEQ_CST);
        if (cur <= want) {
            self->v.inflight++; /* the decrement below needs the mapping */
            view_futex_wait(&self->v, (uint32_t *)ver, (uint32_t)cur, seconds);
            __atomic_fetch_sub(w, 1, __ATOMIC_SEQ_CST);
            shm_view_leave(&self->v);
        }
        else {
            __atomic_fetch_sub(w, 1, __ATOMIC_SEQ_CST);
        }
    }
    if (view_ready(&self->v)) {
        return NULL;
    }
    cur = shm_load64(ver);
    return PyLong_FromUnsignedLongLong(cur > want ? cur : 0);
}

static PyObject *
Latest_waiters(LatestObject *self, PyObject *Py_UNUSED(ignored))
{
    if (lt_ready(self)) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(__atomic_load_n((uint32_t *)LT_AT(self, LT_WAITERS),
                                                   __ATOMIC_RELAXED));
}

static PyObject *
Latest_get_retries(LatestObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->retries);
}

/* Subclasses (shmkit.Latest) get their dict and GC from subtype_dealloc. */
static void
Latest_dealloc(LatestObject *self)
{
    self->v.inflight = 0;
    if (self->attached) {
        shm_view_close(&self->v);
    }
    Py_CLEAR(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Latest_methods[] = {
    {"set", (PyCFunction)(void (*)(void))Latest_set, METH_FASTCALL | METH_KEYWORDS,
     "set(data, *, timeout=None) -> version: publish data as the newest value."},
    {"get", (PyCFunction)(void (*)(void))Latest_get, METH_FASTCALL | METH_KEYWORDS,
     "get(*, timeout=None): a consistent copy of the newest value."},
    {"_c_attach", (PyCFunction)Latest_attach, METH_VARARGS,
     "_c_attach(buffer, name, body_off, nslots, size, slots_off, stride, flags)"},
    {"_c_detach", (PyCFunction)Latest_detach, METH_NOARGS, "stop using the mapping"},
    {"_c_fast_set", (PyCFunction)Latest_set_fast, METH_O, "enable set()'s fast path"},
    {"_c_write_locked", (PyCFunction)(void (*)(void))Latest_write_locked, METH_FASTCALL,
     "_c_write_locked(data, owner_died) -> version (writer mutex held by the caller)"},
    {"_c_wake", (PyCFunction)Latest_wake, METH_NOARGS, "wake wait_newer sleepers"},
    {"_c_read", (PyCFunction)Latest_read, METH_O, "_c_read(tries) -> (version, bytes) | None"},
    {"_c_read_into", (PyCFunction)(void (*)(void))Latest_read_into, METH_FASTCALL,
     "_c_read_into(buffer, tries) -> (version, nbytes) | None"},
    {"_c_version", (PyCFunction)Latest_version, METH_NOARGS, "newest published version"},
    {"_c_wait", (PyCFunction)(void (*)(void))Latest_wait, METH_FASTCALL,
     "_c_wait(version, seconds, spin) -> newer version or 0"},
    {"_c_waiters", (PyCFunction)Latest_waiters, METH_NOARGS, "readers asleep in wait_newer"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Latest_getset[] = {
    {"_c_retries", (getter)Latest_get_retries, NULL, "reads retried by this handle", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LatestType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkit._core._seqlock.LatestBase",
    .tp_doc = "Base of shmkit.Latest: set/get/get_into/wait_newer as single C calls.",
    .tp_basicsize = sizeof(LatestObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Latest_dealloc,
    .tp_methods = Latest_methods,
    .tp_getset = Latest_getset,
};

/* ================================================================ Ring */

/* Broadcast body (offsets from body_off; layout version 4, drawn in
 * shmkit/_shm/broadcast_ring.py):
 *      0  published       u64; its low 32 bits are the readers' futex word
 *      8  wake_hint       a fresh value each reader stores before it sleeps
 *    104  aborted         loans abandoned
 *    128  writer_waiting  1 while a back-pressured publisher waits for room,
 *                         2 while it sleeps on progress (then readers wake it)
 *    136  progress (u32)  bumped by readers that move while writer_waiting;
 *                         the publisher's futex word
 *    144  joins           bumped by every tethered subscriber that joins a
 *                         back-pressured ring: the publisher's cached room
 *                         is void once it changed
 *    320  subscriber table, 64 bytes an entry: state (0 free, 1 tethered,
 *         2 untethered), cursor, pid, ...; entry i's liveness is an OFD
 *         lock on byte body_off + 320 + 64 i
 *      S  slots; message n lives in slot n % slots */
#define RG_PUBLISHED 0
#define RG_WAKE_HINT 8
#define RG_ABORTED 104
#define RG_WRITER_WAITING 128
#define RG_PROGRESS 136
#define RG_JOINS 144
#define RG_WW_ASLEEP 2
#define RG_SPIN_ADAPTIVE 2
#define RG_SPIN_FIXED 3
#define RG_SUBS 320
#define RG_SUB_SIZE 64
#define RG_S_STATE 0
#define RG_S_CURSOR 8
#define RG_TETHERED 1

#define RGF_CHECKSUM 1
#define RGF_BP 2 /* subscriber: tethered in back-pressure mode; publisher: back-pressure */

/* recv results below zero */
#define RV_EMPTY (-1)
#define RV_LAPPED (-2)
#define RV_RETRY (-3)
#define RV_TOO_SMALL (-4)
#define RV_BAD_CRC (-5)
#define RV_NO_ROOM (-1)

typedef struct {
    PyObject_HEAD
    shm_view v;
    int attached;
    uint32_t flags;
    Py_ssize_t body;
    uint64_t slot_size, slots, slots_off, stride;
    long long cursor_off; /* subscriber: its cursor word (from body); -1 publisher */
    uint64_t next;        /* publisher: next message number; subscriber: next to read */
    uint64_t room;        /* publisher: first number that needs a room check */
    uint64_t joins;       /* publisher: the joins word its room was computed at */
    long long loaned;     /* publisher: number of the open loan, or -1 */
    uint64_t woken;       /* publisher: the wake hint last woken for */
    uint64_t hint;        /* subscriber: its next wake hint */
    int pinned;           /* subscriber: views held; the cursor waits for release */
    uint64_t last_len;    /* subscriber: length of the last recv'd view */
    sl_spinner spin;      /* adaptive spin of wait / wait_room */
    double fixed_spin;    /* wait's budget with spin RG_SPIN_FIXED (Subscriber.spin) */
    PyObject *name;
} RingObject;

#define RG_AT(self, off) ((self)->v.base + (self)->body + (off))

static inline char *
rg_slot(RingObject *self, uint64_t n)
{
    return RG_AT(self, self->slots_off + (n % self->slots) * self->stride);
}

static int
rg_ready(RingObject *self)
{
    if (!self->attached) {
        PyErr_SetString(E.closed, "broadcast handle is not attached");
        return -1;
    }
    return view_ready(&self->v);
}

/* The ring's spin: up to SL_SPIN holding the GIL (a quick hand-off pays
 * nothing more), then, for an adaptive budget past it, without the GIL, so
 * that the process's other threads run meanwhile -- one of them may be the
 * thread that will publish or free room (a bridge, asyncio's watchers): a
 * spinner holding the GIL for its whole budget would stall them and lengthen the
 * very wait it spins for. 1 moved, 0 not, -1 descheduled (see sl_spin), -2
 * the handle was closed meanwhile (exception set). */
static int
rg_spin(RingObject *self, const char *word, int is32, uint64_t val, double budget)
{
    double first = budget < SL_SPIN ? budget : SL_SPIN;
    int r = sl_spin(word, is32, val, first);
    if (r != 0 || budget <= first) {
        return r;
    }
    self->v.inflight++; /* the mapping stays while the GIL is released */
    Py_BEGIN_ALLOW_THREADS
    r = sl_spin(word, is32, val, budget - first);
    Py_END_ALLOW_THREADS
    shm_view_leave(&self->v);
    return view_ready(&self->v) ? -2 : r;
}

static int
Ring_init(RingObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *buf, *name;
    long long body, slot_size, slots, slots_off, stride, cursor_off;
    unsigned int flags;
    static char *kwlist[] = {"buffer", "name",   "body_off",   "slot_size", "slots",
                             "slots_off", "stride", "cursor_off", "flags",     NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OULLLLLLI:Ring", kwlist, &buf, &name, &body,
                                     &slot_size, &slots, &slots_off, &stride, &cursor_off,
                                     &flags)) {
        return -1;
    }
    if (self->attached) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is already initialised");
        return -1;
    }
    if (slot_size < 1 || slots < 1 || stride < SL_HEAD + slot_size || stride % 64 ||
        slots_off < 320 || slots_off % 64 || body % 64 ||
        (cursor_off >= 0 && (cursor_off % 8 || cursor_off + 8 > slots_off))) {
        PyErr_SetString(E.layout_error, "broadcast: inconsistent ring geometry");
        return -1;
    }
    if (shm_view_init(&self->v, buf)) {
        return -1;
    }
    if (slots > (LLONG_MAX - slots_off) / stride ||
        shm_check(&E, &self->v, body, slots_off + slots * stride, 64)) {
        shm_view_close(&self->v);
        return -1;
    }
    self->body = (Py_ssize_t)body;
    self->slot_size = (uint64_t)slot_size;
    self->slots = (uint64_t)slots;
    self->slots_off = (uint64_t)slots_off;
    self->stride = (uint64_t)stride;
    self->cursor_off = cursor_off;
    self->flags = flags;
    self->loaned = -1;
    self->woken = (uint64_t)-1;
    self->room = UINT64_MAX;
    sl_spinner_init(&self->spin);
    self->fixed_spin = SL_SPIN;
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
    self->attached = 1;
    return 0;
}

static void
Ring_dealloc(RingObject *self)
{
    self->v.inflight = 0;
    if (self->attached) {
        shm_view_close(&self->v);
    }
    Py_CLEAR(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Ring_close(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->attached) {
        shm_view_close(&self->v);
    }
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- publisher */

/* Wake sleeping readers if one registered a new hint since the last wake. */
static void
rg_wake_readers(RingObject *self)
{
    /* seq_cst fence: published is visible before we read the hint; pairs
     * with the reader's hint store + fence + re-check in Ring_wait(). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t hint = shm_relaxed64(RG_AT(self, RG_WAKE_HINT));
    if (hint != self->woken) {
        self->woken = hint;
        shm_futex_wake((uint32_t *)RG_AT(self, RG_PUBLISHED), INT_MAX);
    }
}

/* Seal message p of n bytes and publish it. */
static void
rg_seal(RingObject *self, char *slot, uint64_t p, uint64_t n)
{
    sl_end(slot, p, n, self->flags & RGF_CHECKSUM);
    shm_crash("broadcast.publish.sealed");
    /* release: pairs with the acquire load of published in rg_recv() */
    shm_store64(RG_AT(self, RG_PUBLISHED), p + 1);
    self->next = p + 1;
    rg_wake_readers(self);
}

/* True when message p may not be written before the caller re-scans the
 * cursors: p is past the cached room, or (back-pressure) a subscriber joined
 * since the scan. The relaxed load of joins follows the seq_cst fence after
 * the previous publish's store of published (rg_wake_readers) or the one in
 * Ring_begin_scan(): pairs with the joiner's fetch-add + fence + load of
 * published in Ring_join() (Dekker: either we see the join or it sees p). */
static inline int
rg_needs_room(RingObject *self, uint64_t p)
{
    return p >= self->room ||
           ((self->flags & RGF_BP) && shm_relaxed64(RG_AT(self, RG_JOINS)) != self->joins);
}

/* publish(data) -> message number, or -1 (nothing written) when the next
 * number needs room (back-pressure: the caller waits, sets room, retries). */
static PyObject *
Ring_publish(RingObject *self, PyObject *data)
{
    Py_buffer src;
    if (get_src(data, &src, "broadcast messages")) {
        return NULL;
    }
    if (rg_ready(self)) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if ((uint64_t)src.len > self->slot_size) {
        PyErr_Format(MessageTooLarge,
                     "message of %zd bytes does not fit broadcast %R (slot size %llu)", src.len,
                     self->name, (unsigned long long)self->slot_size);
        PyBuffer_Release(&src);
        return NULL;
    }
    uint64_t p = self->next;
    if (rg_needs_room(self, p)) {
        PyBuffer_Release(&src);
        return PyLong_FromLong(RV_NO_ROOM);
    }
    char *slot = rg_slot(self, p);
    self->v.inflight++;
    sl_begin(slot, p, (size_t)src.len);
    shm_crash("broadcast.publish.busy");
    sl_copy_in(slot + SL_HEAD, src.buf, (size_t)src.len, "broadcast.publish.half");
    shm_crash("broadcast.publish.copied");
    rg_seal(self, slot, p, (uint64_t)src.len);
    shm_view_leave(&self->v);
    PyBuffer_Release(&src);
    return PyLong_FromUnsignedLongLong(p);
}

/* loan() -> number of the lent message (slot marked busy), or -1 (no room). */
static PyObject *
Ring_loan(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (rg_ready(self)) {
        return NULL;
    }
    if (self->loaned >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "a loan is already open");
        return NULL;
    }
    uint64_t p = self->next;
    if (rg_needs_room(self, p)) {
        return PyLong_FromLong(RV_NO_ROOM);
    }
    sl_begin(rg_slot(self, p), p, 0);
    /* The caller may fill the slot with non-temporal stores (a large memset):
     * a full fence keeps them after the odd seq on every CPU. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    self->loaned = (long long)p;
    shm_crash("broadcast.loan.taken");
    return PyLong_FromUnsignedLongLong(p);
}

/* commit(nbytes) -> message number: publish the open loan. */
static PyObject *
Ring_commit(RingObject *self, PyObject *arg)
{
    uint64_t n;
    if (parse_u64(arg, &n) || rg_ready(self)) {
        return NULL;
    }
    if (self->loaned < 0) {
        PyErr_SetString(PyExc_RuntimeError, "no open loan");
        return NULL;
    }
    if (n > self->slot_size) {
        PyErr_Format(MessageTooLarge, "commit of %llu bytes exceeds the slot (%llu)",
                     (unsigned long long)n, (unsigned long long)self->slot_size);
        return NULL;
    }
    uint64_t p = (uint64_t)self->loaned;
    self->loaned = -1;
    /* Whatever filled the slot (numpy, non-temporal stores) is ordered
     * before the seal on every CPU. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    shm_crash("broadcast.publish.copied");
    rg_seal(self, rg_slot(self, p), p, n);
    return PyLong_FromUnsignedLongLong(p);
}

/* abort(): drop the open loan (its slot stays busy; the number is reused). */
static PyObject *
Ring_abort(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->loaned >= 0) {
        self->loaned = -1;
        if (!self->v.closed && self->v.base != NULL) {
            __atomic_fetch_add((uint64_t *)RG_AT(self, RG_ABORTED), 1, __ATOMIC_RELAXED);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
Ring_wake_readers(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (rg_ready(self)) {
        return NULL;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    shm_futex_wake((uint32_t *)RG_AT(self, RG_PUBLISHED), INT_MAX);
    Py_RETURN_NONE;
}

/* begin_scan(): before the publisher scans the cursors, note the joins
 * word (seq_cst fence, then acquire: pairs with the joiner's fetch-add in
 * Ring_join(), so a join seen here has its cursor visible to the scan). */
static PyObject *
Ring_begin_scan(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (rg_ready(self)) {
        return NULL;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    self->joins = shm_load64(RG_AT(self, RG_JOINS));
    Py_RETURN_NONE;
}

/* True unless no open file description holds the OFD lock on the byte (a
 * subscriber entry's owner is gone). A failed probe counts as alive: the
 * caller never skips a subscriber it cannot prove dead. */
static int
rg_entry_alive(int fd, off_t byte)
{
#ifdef F_OFD_GETLK
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    if (fcntl(fd, F_OFD_GETLK, &fl) == 0) {
        return fl.l_type != F_UNLCK;
    }
#else
    (void)fd;
    (void)byte;
#endif
    return 1;
}

/* The lowest cursor among live tethered subscribers (headroom if none), or
 * RG_SCAN_PY: a tethered subscriber is behind `need` and only the Python scan
 * can tell whether it lives (fd < 0: no OFD locks), or RG_SCAN_ERR with an
 * exception set. Notes the joins word first, as begin_scan() does. */
#define RG_SCAN_PY (-1)
#define RG_SCAN_ERR (-2)

static int64_t
rg_scan(RingObject *self, uint64_t need, uint64_t headroom, uint64_t subs, long fd)
{
    if (subs > (self->slots_off - RG_SUBS) / RG_SUB_SIZE) {
        PyErr_Format(E.layout_error, "broadcast %R: %llu subscriber entries do not fit its table",
                     self->name, (unsigned long long)subs);
        return RG_SCAN_ERR;
    }
    if (headroom > (uint64_t)INT64_MAX) {
        PyErr_SetString(PyExc_ValueError, "scan: headroom out of range");
        return RG_SCAN_ERR;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    self->joins = shm_load64(RG_AT(self, RG_JOINS));
    uint64_t low = headroom;
    for (uint64_t i = 0; i < subs; i++) {
        const char *e = RG_AT(self, RG_SUBS + i * RG_SUB_SIZE);
        if (shm_load64(e + RG_S_STATE) != RG_TETHERED) {
            continue;
        }
        /* acquire: pairs with the subscriber's release store in rg_store_cursor() */
        uint64_t cursor = shm_load64(e + RG_S_CURSOR);
        if (cursor < need) {
            if (fd < 0) {
                return RG_SCAN_PY;
            }
            if (!rg_entry_alive((int)fd, (off_t)(self->body + RG_SUBS + i * RG_SUB_SIZE))) {
                continue;
            }
        }
        if (cursor < low) {
            low = cursor;
        }
    }
    return (int64_t)low;
}

static int
parse_fd(PyObject *o, long *fd)
{
    *fd = PyLong_AsLong(o);
    if (*fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*fd > INT_MAX || *fd < -1) {
        PyErr_SetString(PyExc_ValueError, "fd out of range");
        return -1;
    }
    return 0;
}

/* scan(need, headroom, subscribers, fd) -> the lowest cursor among live
 * tethered subscribers (headroom if none), or -1 (see rg_scan). */
static PyObject *
Ring_scan(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t need, headroom, subs;
    long fd;
    if (nargs != 4 || parse_u64(args[0], &need) || parse_u64(args[1], &headroom) ||
        parse_u64(args[2], &subs)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "scan(need, headroom, subscribers, fd)");
        }
        return NULL;
    }
    if (parse_fd(args[3], &fd) || rg_ready(self)) {
        return NULL;
    }
    int64_t low = rg_scan(self, need, headroom, subs, fd);
    return low == RG_SCAN_ERR ? NULL : PyLong_FromLongLong(low);
}

/* join() -> published: a tethered subscriber that stored its cursor and
 * state announces itself (seq_cst fetch-add, release: the cursor is visible
 * to a publisher that sees the new value), fences, and reads published. Every
 * message the publisher may write without having seen this join is below
 * the returned number + 1, so messages from (returned + 1 - slots) on are
 * protected (Dekker with rg_needs_room()). */
static PyObject *
Ring_join(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (rg_ready(self)) {
        return NULL;
    }
    __atomic_fetch_add((uint64_t *)RG_AT(self, RG_JOINS), 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t published = shm_load64(RG_AT(self, RG_PUBLISHED));
    if (published >= SL_MAX_SEQ) {
        PyErr_Format(E.layout_error, "broadcast %R: published count %llu is corrupt", self->name,
                     (unsigned long long)published);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(published);
}

/* Wait up to `seconds` for the progress word to move from `seen`: spin (the
 * adaptive budget, or SL_SPIN), then mark the publisher asleep and sleep on
 * the word (GIL released). -1 if the handle was closed meanwhile. */
static int
rg_wait_progress(RingObject *self, uint32_t seen, double seconds, int adaptive)
{
    const char *w = RG_AT(self, RG_PROGRESS);
    double start = shm_monotonic();
    double budget = adaptive ? self->spin.budget : SL_SPIN;
    int r = rg_spin(self, w, 1, seen, budget < seconds ? budget : seconds);
    if (r == -2) {
        return -1;
    }
    if (r > 0) {
        return 0;
    }
    uint64_t *ww = (uint64_t *)RG_AT(self, RG_WRITER_WAITING);
    /* seq_cst store, then re-check: pairs with the reader's bump + load of
     * writer_waiting in rg_store_cursor() */
    __atomic_store_n(ww, RG_WW_ASLEEP, __ATOMIC_SEQ_CST);
    if (!sl_moved(w, 1, seen)) {
        self->v.inflight++; /* the store below needs the mapping */
        view_futex_wait(&self->v, (uint32_t *)w, seen, seconds);
        __atomic_store_n(ww, 1, __ATOMIC_RELAXED);
        shm_view_leave(&self->v);
    }
    else {
        __atomic_store_n(ww, 1, __ATOMIC_RELAXED);
    }
    if (view_ready(&self->v)) {
        return -1;
    }
    if (adaptive) { /* a fixed spin has nothing to learn */
        int moved = sl_moved(w, 1, seen);
        sl_adapt(&self->spin, moved, r < 0, moved ? shm_monotonic() - start : INFINITY);
    }
    return 0;
}

/* wait_room(seen, seconds, adaptive): the back-pressured publisher waits
 * until the progress word moves from `seen` (see rg_wait_progress). */
static PyObject *
Ring_wait_room(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t seen;
    if (nargs != 3 || parse_u64(args[0], &seen)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "wait_room(seen, seconds, adaptive)");
        }
        return NULL;
    }
    double seconds = PyFloat_AsDouble(args[1]);
    int adaptive = PyObject_IsTrue(args[2]);
    if ((seconds == -1.0 && PyErr_Occurred()) || adaptive < 0 || rg_ready(self)) {
        return NULL;
    }
    if (rg_wait_progress(self, (uint32_t)seen, seconds, adaptive)) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* make_room(p, subscribers, fd, seconds, adaptive) -> 1 when message p may be
 * written (room set), 0 when not within `seconds`, -1 when a subscriber that
 * is behind needs the Python liveness probe (fd < 0). The back-pressured
 * publisher's whole wait for room in one call: scan the cursors; if the
 * slowest live tethered subscriber still holds message p - slots, announce
 * (writer_waiting = 1, seq_cst fence: pairs with the reader's cursor store +
 * fence + load in rg_store_cursor()), read progress, re-scan, and wait for
 * progress to move (rg_wait_progress), until room or `seconds`. Returns to
 * Python at least every `seconds` and on a pending signal. */
static PyObject *
Ring_make_room(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t p, subs;
    long fd;
    if (nargs != 5 || parse_u64(args[0], &p) || parse_u64(args[1], &subs)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "make_room(p, subscribers, fd, seconds, adaptive)");
        }
        return NULL;
    }
    if (parse_fd(args[2], &fd)) {
        return NULL;
    }
    double seconds = PyFloat_AsDouble(args[3]);
    int adaptive = PyObject_IsTrue(args[4]);
    if ((seconds == -1.0 && PyErr_Occurred()) || adaptive < 0 || rg_ready(self)) {
        return NULL;
    }
    if (p >= SL_MAX_SEQ) {
        PyErr_Format(E.layout_error, "broadcast %R: message number %llu is corrupt", self->name,
                     (unsigned long long)p);
        return NULL;
    }
    uint64_t slots = self->slots;
    uint64_t need = p + 1 > slots ? p + 1 - slots : 0;
    uint64_t headroom = p + slots; /* nobody to wait for: one lap of headroom */
    int64_t low = rg_scan(self, need, headroom, subs, fd);
    if (low < 0) {
        return low == RG_SCAN_ERR ? NULL : PyLong_FromLong(-1);
    }
    if ((uint64_t)low >= need) {
        self->room = (uint64_t)low + slots;
        return PyLong_FromLong(1);
    }
    uint64_t *ww = (uint64_t *)RG_AT(self, RG_WRITER_WAITING);
    double end = shm_monotonic() + seconds;
    long result = 0;
    for (;;) {
        __atomic_store_n(ww, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        /* acquire: pairs with the reader's seq_cst bump */
        uint32_t seen = __atomic_load_n((uint32_t *)RG_AT(self, RG_PROGRESS), __ATOMIC_ACQUIRE);
        low = rg_scan(self, need, headroom, subs, fd);
        if (low == RG_SCAN_ERR) {
            __atomic_store_n(ww, 0, __ATOMIC_RELAXED);
            return NULL;
        }
        if (low == RG_SCAN_PY) {
            result = -1;
            break;
        }
        if ((uint64_t)low >= need) {
            self->room = (uint64_t)low + slots;
            result = 1;
            break;
        }
        double left = end - shm_monotonic();
        if (left <= 0) {
            break;
        }
        if (rg_wait_progress(self, seen, left, adaptive)) {
            return NULL; /* closed by another thread: the words are gone */
        }
        if (PyErr_CheckSignals()) {
            __atomic_store_n(ww, 0, __ATOMIC_RELAXED);
            return NULL;
        }
    }
    __atomic_store_n(ww, 0, __ATOMIC_RELAXED);
    return PyLong_FromLong(result);
}

/* ---------------------------------------------------------------- subscriber */

/* Store the cursor and, in back-pressure mode, wake a waiting publisher. */
static void
rg_store_cursor(RingObject *self, uint64_t c)
{
    if (self->cursor_off < 0) {
        return;
    }
    /* release: pairs with the publisher's acquire load in its cursor scan */
    shm_store64(RG_AT(self, self->cursor_off), c);
    if (self->flags & RGF_BP) {
        /* seq_cst fence: the cursor is visible before we read writer_waiting;
         * pairs with the publisher's (writer_waiting = 1, fence, scan). */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (shm_relaxed64(RG_AT(self, RG_WRITER_WAITING))) {
            uint32_t *w = (uint32_t *)RG_AT(self, RG_PROGRESS);
            __atomic_fetch_add(w, 1, __ATOMIC_SEQ_CST);
            /* seq_cst: the bump above precedes this load; pairs with the
             * publisher's store of ASLEEP, fence, re-check in
             * Ring_wait_room() (Dekker: it sees the bump or we see it
             * asleep). A spinning publisher needs no system call. */
            if (__atomic_load_n((uint64_t *)RG_AT(self, RG_WRITER_WAITING), __ATOMIC_SEQ_CST) ==
                RG_WW_ASLEEP) {
                shm_futex_wake(w, INT_MAX);
            }
        }
    }
}

/* Read message self->next in `mode` (0 bytes, 1 into dst, 2 view). The
 * caller pins the mapping (an allocation may run a finalizer that closes it). */
static PyObject *
rg_recv(RingObject *self, int mode, char *dst, Py_ssize_t dstlen)
{
    uint64_t n = self->next;
    /* acquire: pairs with the release store of published in rg_seal() */
    uint64_t published = shm_load64(RG_AT(self, RG_PUBLISHED));
    if (published >= SL_MAX_SEQ) {
        PyErr_Format(E.layout_error, "broadcast %R: published count %llu is corrupt", self->name,
                     (unsigned long long)published);
        return NULL;
    }
    if (n >= published) {
        return PyLong_FromLong(RV_EMPTY);
    }
    char *slot = rg_slot(self, n);
    uint64_t want = 2 * n + 2;
    uint64_t s = sl_seq(slot);
    if (s != want) {
        return PyLong_FromLong(s > want ? RV_LAPPED : RV_RETRY);
    }
    uint64_t len = shm_relaxed64(slot + SL_LEN);
    if (len > self->slot_size) {
        /* never bytes from the next slot: a stable bad length is corruption */
        if (!sl_still(slot, want, 0)) {
            return PyLong_FromLong(RV_LAPPED);
        }
        PyErr_Format(E.layout_error,
                     "broadcast %R: message #%llu claims %llu bytes in a %llu-byte slot",
                     self->name, (unsigned long long)n, (unsigned long long)len,
                     (unsigned long long)self->slot_size);
        return NULL;
    }
    if (mode == 2) {
        /* a view copies nothing; still re-check before handing it out, so a
         * slot overwritten since the first load is never returned */
        shm_crash("broadcast.recv.copied");
        if (!sl_still(slot, want, 0)) {
            return PyLong_FromLong(RV_LAPPED);
        }
        self->last_len = len;
        self->next = n + 1; /* the cursor moves when the view is released */
        return PyLong_FromUnsignedLongLong(len);
    }
    PyObject *bytes = NULL;
    char *target = dst;
    if (mode == 0) {
        bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
        if (bytes == NULL) {
            return NULL;
        }
        target = PyBytes_AS_STRING(bytes);
    }
    else if ((Py_ssize_t)len > dstlen) {
        self->last_len = len;
        return PyLong_FromLong(sl_still(slot, want, 0) ? RV_TOO_SMALL : RV_LAPPED);
    }
    uint64_t crc = shm_relaxed64(slot + SL_CRC);
    sl_copy_out(target, slot + SL_HEAD, (size_t)len, "broadcast.recv.copying");
    shm_crash("broadcast.recv.copied");
    if (!sl_still(slot, want, (size_t)len)) {
        Py_XDECREF(bytes);
        return PyLong_FromLong(RV_LAPPED);
    }
    if ((self->flags & RGF_CHECKSUM) && !sl_crc_ok(target, len, n, crc)) {
        Py_XDECREF(bytes);
        return PyLong_FromLong(RV_BAD_CRC);
    }
    self->next = n + 1;
    if (!self->pinned) {
        rg_store_cursor(self, n + 1);
    }
    if (mode == 0) {
        return bytes;
    }
    return PyLong_FromUnsignedLongLong(len);
}

/* recv() -> bytes, or a negative int: EMPTY, LAPPED, RETRY, BAD_CRC. */
static PyObject *
Ring_recv(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (rg_ready(self)) {
        return NULL;
    }
    self->v.inflight++;
    PyObject *r = rg_recv(self, 0, NULL, 0);
    shm_view_leave(&self->v);
    return r;
}

/* recv_into(buffer) -> length >= 0, or a negative int (TOO_SMALL too). */
static PyObject *
Ring_recv_into(RingObject *self, PyObject *arg)
{
    if (rg_ready(self)) {
        return NULL;
    }
    Py_buffer dst;
    if (PyObject_GetBuffer(arg, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    if (rg_ready(self)) {
        PyBuffer_Release(&dst);
        return NULL;
    }
    self->v.inflight++;
    PyObject *r = rg_recv(self, 1, dst.buf, dst.len);
    shm_view_leave(&self->v);
    PyBuffer_Release(&dst);
    return r;
}

/* recv_view() -> length of message next (which is consumed), or a negative int. */
static PyObject *
Ring_recv_view(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (rg_ready(self)) {
        return NULL;
    }
    self->v.inflight++;
    PyObject *r = rg_recv(self, 2, NULL, 0);
    shm_view_leave(&self->v);
    return r;
}

/* valid(n, length) -> bool: the slot still holds message n whole (after use). */
static PyObject *
Ring_valid(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t n, len;
    if (nargs != 2 || parse_u64(args[0], &n) || parse_u64(args[1], &len)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "valid(n, length)");
        }
        return NULL;
    }
    if (rg_ready(self)) {
        return NULL;
    }
    if (len > self->slot_size || n >= SL_MAX_SEQ) {
        Py_RETURN_FALSE;
    }
    char *slot = rg_slot(self, n);
    uint64_t want = 2 * n + 2;
    /* the caller's reads of the view complete before this re-check */
    if (!sl_still(slot, want, SHM_FENCE_MIN)) {
        Py_RETURN_FALSE;
    }
    if (self->flags & RGF_CHECKSUM) {
        uint64_t crc = shm_relaxed64(slot + SL_CRC);
        int ok = sl_crc_ok(slot + SL_HEAD, len, n, crc) && sl_still(slot, want, SHM_FENCE_MIN);
        return PyBool_FromLong(ok);
    }
    Py_RETURN_TRUE;
}

static PyObject *
Ring_store_cursor(RingObject *self, PyObject *arg)
{
    uint64_t c;
    if (parse_u64(arg, &c) || rg_ready(self)) {
        return NULL;
    }
    rg_store_cursor(self, c);
    Py_RETURN_NONE;
}

/* wait(n, seconds, spin) -> bool: message n is published (or became so).
 * spin: 0 sleep at once, 1 spin SL_SPIN first (a thread that must not hold
 * the GIL long: asyncio's watchers), 2 spin the adaptive budget first, 3 spin
 * fixed_spin first (a subscriber whose user chose its spin). */
static PyObject *
Ring_wait(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t n;
    if (nargs != 3 || parse_u64(args[0], &n)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "wait(n, seconds, spin)");
        }
        return NULL;
    }
    double seconds = PyFloat_AsDouble(args[1]);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    long spin = PyLong_AsLong(args[2]);
    if ((spin == -1 && PyErr_Occurred()) || rg_ready(self)) {
        return NULL;
    }
    char *pub = RG_AT(self, RG_PUBLISHED);
    uint64_t seen = shm_load64(pub);
    if (seen > n) {
        Py_RETURN_TRUE;
    }
    double start = shm_monotonic();
    int r = 0;
    if (spin) {
        double budget = spin == RG_SPIN_ADAPTIVE ? self->spin.budget
                        : spin == RG_SPIN_FIXED  ? self->fixed_spin
                                                 : SL_SPIN;
        r = rg_spin(self, pub, 0, n, budget < seconds ? budget : seconds);
        if (r == -2) {
            return NULL;
        }
        if (r > 0) {
            Py_RETURN_TRUE;
        }
    }
    else {
        self->spin.budget = SL_SPIN; /* a later slice: a long wait */
    }
    /* Register a fresh hint, fence, re-check (Dekker with rg_wake_readers). */
    self->hint++;
    shm_set_relaxed64(RG_AT(self, RG_WAKE_HINT), self->hint);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    seen = shm_relaxed64(pub);
    if (seen > n) {
        Py_RETURN_TRUE;
    }
    view_futex_wait(&self->v, (uint32_t *)pub, (uint32_t)seen, seconds);
    if (view_ready(&self->v)) {
        return NULL;
    }
    int got = shm_load64(pub) > n;
    if (spin == RG_SPIN_ADAPTIVE) {
        sl_adapt(&self->spin, got, r < 0, got ? shm_monotonic() - start : INFINITY);
    }
    return PyBool_FromLong(got);
}

/* ---------------------------------------------------------------- attributes */

static PyObject *
Ring_get_next(RingObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->next);
}

static int
Ring_set_next(RingObject *self, PyObject *value, void *Py_UNUSED(c))
{
    uint64_t x;
    if (value == NULL || parse_u64(value, &x)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "cannot delete next");
        }
        return -1;
    }
    self->next = x;
    return 0;
}

static PyObject *
Ring_get_room(RingObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->room);
}

static int
Ring_set_room(RingObject *self, PyObject *value, void *Py_UNUSED(c))
{
    uint64_t x;
    if (value == NULL || parse_u64(value, &x)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "cannot delete room");
        }
        return -1;
    }
    self->room = x;
    return 0;
}

static PyObject *
Ring_get_hint(RingObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->hint);
}

static int
Ring_set_hint(RingObject *self, PyObject *value, void *Py_UNUSED(c))
{
    uint64_t x;
    if (value == NULL || parse_u64(value, &x)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "cannot delete hint");
        }
        return -1;
    }
    self->hint = x;
    return 0;
}

static PyObject *
Ring_get_pinned(RingObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->pinned);
}

static int
Ring_set_pinned(RingObject *self, PyObject *value, void *Py_UNUSED(c))
{
    int x = value ? PyObject_IsTrue(value) : -1;
    if (x < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "cannot delete pinned");
        }
        return -1;
    }
    self->pinned = x;
    return 0;
}

static PyObject *
Ring_get_loaned(RingObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLongLong(self->loaned);
}

static PyObject *
Ring_get_last_len(RingObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->last_len);
}

static PyMethodDef Ring_methods[] = {
    {"publish", (PyCFunction)Ring_publish, METH_O, "publish(data) -> number | -1 (no room)"},
    {"loan", (PyCFunction)Ring_loan, METH_NOARGS, "loan() -> number | -1 (no room)"},
    {"commit", (PyCFunction)Ring_commit, METH_O, "commit(nbytes) -> number"},
    {"abort", (PyCFunction)Ring_abort, METH_NOARGS, "abort(): drop the open loan"},
    {"wake_readers", (PyCFunction)Ring_wake_readers, METH_NOARGS, "futex wake every reader"},
    {"wait_room", (PyCFunction)(void (*)(void))Ring_wait_room, METH_FASTCALL,
     "wait_room(seen, seconds, adaptive): wait while the progress word equals seen"},
    {"make_room", (PyCFunction)(void (*)(void))Ring_make_room, METH_FASTCALL,
     "make_room(p, subscribers, fd, seconds, adaptive) -> 1 room, 0 not yet, -1 ask Python"},
    {"scan", (PyCFunction)(void (*)(void))Ring_scan, METH_FASTCALL,
     "scan(need, headroom, subscribers, fd) -> lowest live tethered cursor, or -1"},
    {"begin_scan", (PyCFunction)Ring_begin_scan, METH_NOARGS,
     "begin_scan(): note the joins word before scanning the cursors"},
    {"join", (PyCFunction)Ring_join, METH_NOARGS,
     "join() -> published: announce a tethered subscriber (back-pressure)"},
    {"recv", (PyCFunction)Ring_recv, METH_NOARGS, "recv() -> bytes | code < 0"},
    {"recv_into", (PyCFunction)Ring_recv_into, METH_O, "recv_into(buffer) -> length | code < 0"},
    {"recv_view", (PyCFunction)Ring_recv_view, METH_NOARGS, "recv_view() -> length | code < 0"},
    {"valid", (PyCFunction)(void (*)(void))Ring_valid, METH_FASTCALL,
     "valid(n, length) -> bool"},
    {"store_cursor", (PyCFunction)Ring_store_cursor, METH_O,
     "store_cursor(c): publish the cursor; wake a back-pressured publisher"},
    {"wait", (PyCFunction)(void (*)(void))Ring_wait, METH_FASTCALL,
     "wait(n, seconds, spin) -> bool: message n is published"},
    {"close", (PyCFunction)Ring_close, METH_NOARGS, "stop using the mapping"},
    {NULL, NULL, 0, NULL},
};

static PyObject *
Ring_get_spin(RingObject *self, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(self->spin.budget);
}

static PyObject *
Ring_get_fixed_spin(RingObject *self, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(self->fixed_spin);
}

static int
Ring_set_fixed_spin(RingObject *self, PyObject *value, void *Py_UNUSED(c))
{
    double x = value == NULL ? -1.0 : PyFloat_AsDouble(value);
    if (x == -1.0 && value != NULL && PyErr_Occurred()) {
        return -1;
    }
    if (!(x >= 0.0 && x <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "fixed_spin must be between 0 and 1 second");
        return -1;
    }
    self->fixed_spin = x;
    return 0;
}

static PyGetSetDef Ring_getset[] = {
    {"next", (getter)Ring_get_next, (setter)Ring_set_next, "next message number", NULL},
    {"room", (getter)Ring_get_room, (setter)Ring_set_room, "first number needing room", NULL},
    {"hint", (getter)Ring_get_hint, (setter)Ring_set_hint, "next wake hint", NULL},
    {"pinned", (getter)Ring_get_pinned, (setter)Ring_set_pinned, "views held", NULL},
    {"loaned", (getter)Ring_get_loaned, NULL, "the open loan's number or -1", NULL},
    {"last_len", (getter)Ring_get_last_len, NULL, "length of the last message seen", NULL},
    {"spin_budget", (getter)Ring_get_spin, NULL, "adaptive spin budget (seconds)", NULL},
    {"fixed_spin", (getter)Ring_get_fixed_spin, (setter)Ring_set_fixed_spin,
     "wait's spin budget with spin 3 (seconds)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkit._core._seqlock.Ring",
    .tp_doc = "Ring(buffer, name, body_off, slot_size, slots, slots_off, stride, cursor_off, "
              "flags): Broadcast's hot paths.",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
};

/* ================================================================ module */

static PyObject *
seqlock_reload(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    shm_crash_load();
    hook_load();
    Py_RETURN_NONE;
}

static PyMethodDef seqlock_methods[] = {
    {"reload_test_points", seqlock_reload, METH_NOARGS,
     "re-read SHMKIT_CRASH_AT/_AFTER and SHMKIT_HOOK_* (tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef seqlock_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmkit._core._seqlock",
    .m_doc = "The seqlock Latest and Broadcast share: set/get, publish/recv as single C calls.",
    .m_size = -1,
    .m_methods = seqlock_methods,
};

PyMODINIT_FUNC
PyInit__seqlock(void)
{
    if (shm_errors_load(&E)) {
        return NULL;
    }
    PyObject *errors = PyImport_ImportModule("shmkit.errors");
    if (errors == NULL) {
        return NULL;
    }
    Empty = PyObject_GetAttrString(errors, "Empty");
    MessageTooLarge = PyObject_GetAttrString(errors, "MessageTooLarge");
    Py_DECREF(errors);
    if (Empty == NULL || MessageTooLarge == NULL) {
        return NULL;
    }
    shm_crash_load();
    hook_load();
    if (PyType_Ready(&LatestType) < 0 || PyType_Ready(&RingType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&seqlock_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "LatestBase", (PyObject *)&LatestType) < 0 ||
        PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0 ||
        PyModule_AddIntConstant(m, "EMPTY", RV_EMPTY) < 0 ||
        PyModule_AddIntConstant(m, "LAPPED", RV_LAPPED) < 0 ||
        PyModule_AddIntConstant(m, "RETRY", RV_RETRY) < 0 ||
        PyModule_AddIntConstant(m, "TOO_SMALL", RV_TOO_SMALL) < 0 ||
        PyModule_AddIntConstant(m, "BAD_CRC", RV_BAD_CRC) < 0 ||
        PyModule_AddIntConstant(m, "NO_ROOM", RV_NO_ROOM) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
