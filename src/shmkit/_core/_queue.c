/* shmkit._core._queue — the Queue's hot paths, each one whole critical section.
 *
 *   Ring        built over a queue's mapping (see the layout comment in
 *               shmkit/_shm/queue_ring.py, QUE3). put / put_many / get /
 *               get_many / get_into fast paths: trylock (bounded spin with
 *               pause), validate, copy, store in the documented order,
 *               unlock — one C call, so no Python code (and no signal
 *               handler's exception) runs between taking a lock and releasing
 *               it. Where a fast path cannot finish it returns a sentinel and
 *               touches nothing; the general path (Python) then runs, holding
 *               its locks through lock()/unlock() below, which are also single
 *               C calls that record a death or an interrupted critical section
 *               ("repair due") in shared memory before returning.
 *               Waits: a bounded C spin with pause, then futex words in the
 *               segment (one per side), woken only when someone sleeps.
 *
 * Memory model (pairs named at each access):
 *   producer  payload, record header, puts (relaxed), then tail (release)
 *   consumer  tail (acquire), payload, then head (release), then gets
 *   producer  head (acquire) before reusing space the consumer freed
 * Everything else a side touches is under its own lock (P or C); words both
 * sides change (state, waiter counts) change only under both.
 *
 * Every offset and length read from shared memory is checked before use: a
 * record that fails a check sends the call to the general path, which skips
 * and counts it (or raises LayoutError for corrupt indices).
 */
#include "shm.h"

#include <math.h>

static shm_errors E;

/* ---------------------------------------------------------------- layout */

/* Byte offsets in the queue body (see queue_ring.py for the full table). */
#define Q_MUTEX_C 0
#define Q_MUTEX_P 64
#define Q_HEAD 128
#define Q_GETS 136
#define Q_TAIL 192
#define Q_PUTS 200
#define Q_PDIED 208
#define Q_STATE 256
#define Q_DIRTY 280
#define Q_CLAIM 288
#define Q_GWAKE 328 /* u32 futex word consumers sleep on */
#define Q_PWAKE 332 /* u32 futex word producers sleep on */
#define Q_RING 960
#define Q_HDR 16

#define ST_SHUT 1u
#define ST_CLAIMED 2u
#define ST_RESERVED 4u
#define ST_REPAIR 8u
#define ST_BUSY (ST_SHUT | ST_CLAIMED | ST_RESERVED | ST_REPAIR)
#define ST_GW_SHIFT 4
#define ST_GW_MASK 0x0FFFFFFFull
#define ST_PW_SHIFT 32
#define ST_PW_MASK 0x7FFFFFFFull

#define SALT 0x51554555454B4D53ull
#define SALT_BATCH 0x42415443484B4D53ull
#define M32 0xFFFFFFFFull
#define CLAIM_MIN (128u * 1024u)

/* Fast-path answers besides success (shared with Python). */
#define Q_OK 0
#define Q_FULL 1  /* put: no room yet (worth a spin) */
#define Q_EMPTY 1 /* get: nothing queued */
#define Q_GENERAL 2

/* Ring flags (constructor). */
#define F_FAST 1  /* fast paths on: pthread backend, no checksum */
#define F_TWO 2   /* two locks: P for producers, C for consumers */
#define F_FLOCK 4 /* flock backend: the dirty word stands in for EOWNERDEAD */

/* Lock spin: trylock attempts before the fast path gives up (with pauses
 * between; about 10-30 µs in all, longer than any fast critical section). */
#define LOCK_TRIES 128
#define LOCK_PAUSES 4
/* A gap this long between two polls means we were descheduled: the machine
 * has fewer free cores than runnable threads, so stop spinning. */
#define PREEMPTED 50e-6

typedef struct {
    PyObject_HEAD
    shm_view v;
    char *body;
    char *ring;
    uint64_t size; /* ring bytes */
    uint64_t cap;
    int flags;
    pthread_mutex_t *pm; /* producers' lock (C's in one-lock mode) */
    pthread_mutex_t *cm;
    PyObject *cmutex; /* _core.Mutex objects for the general path */
    PyObject *pmutex;
    uint64_t tc; /* tail as this handle's get last read it (a hint, under C) */
} RingObject;

#define W(self, off) ((self)->body + (off))

static inline uint64_t
rd(const RingObject *self, int off)
{
    return shm_relaxed64(W(self, off));
}

static inline void
wr(RingObject *self, int off, uint64_t x)
{
    shm_set_relaxed64(W(self, off), x);
}

static int
ring_ready(RingObject *self)
{
    if (self->v.closed || self->v.base == NULL) {
        PyErr_SetString(E.closed, "the queue's handle is closed");
        return -1;
    }
    return 0;
}

/* trylock with a bounded spin: OK, OWNER_DIED (held, consistent), BUSY, -errno. */
static int
lock_fast(pthread_mutex_t *m)
{
    for (int i = 0; i < LOCK_TRIES; i++) {
        int got = shm_mutex_trylock(m);
        if (got != SHM_BUSY) {
            return got;
        }
        for (int k = 0; k < LOCK_PAUSES; k++) {
            SHM_PAUSE();
        }
    }
    return SHM_BUSY;
}

/* The check word of a record at stream position pos (low 32 bits). */
static inline uint64_t
hcheck(uint64_t w0, uint64_t pos, uint64_t salt)
{
    return (w0 ^ pos ^ salt) & M32;
}

/* Bump a side's futex word and wake its sleepers (only called when the state
 * word counts some). release: the waker's stores before are seen by a woken
 * waiter that re-reads the indices. */
static void
wake(RingObject *self, int off, int n)
{
    uint32_t *word = (uint32_t *)W(self, off);
    __atomic_fetch_add(word, 1, __ATOMIC_RELEASE);
    shm_futex_wake(word, n);
}

/* The producers' words after a P holder died (P held): a valid record at tail
 * whose seq lags puts means puts was stored but tail was not; puts goes back. */
static void
repair_producers(RingObject *self)
{
    uint64_t tail = rd(self, Q_TAIL), puts = rd(self, Q_PUTS);
    if (tail & 7) {
        return;
    }
    uint64_t i = tail % self->size;
    uint64_t w0 = shm_relaxed64(self->ring + i);
    uint64_t w1 = shm_relaxed64(self->ring + (i + 8) % self->size);
    uint64_t n = w0 & M32;
    if (n > self->size - Q_HDR) {
        return;
    }
    if ((w1 & M32) == hcheck(w0, tail, SALT)) {
        if (n > self->cap) {
            return;
        }
    }
    else if ((w1 & M32) != hcheck(w0, tail, SALT_BATCH) || n < 8) {
        return;
    }
    uint64_t lag = (puts - (w0 >> 32)) & M32;
    uint64_t most = self->size / 4 < puts ? self->size / 4 : puts;
    if (lag > 0 && lag <= most) {
        wr(self, Q_PUTS, puts - lag);
    }
}

/* ================================================================ put */

/* One record (a message, or a batch payload of `count`) at tail, under P. */
static int
ring_put(RingObject *self, const char *data, uint64_t n, uint64_t count)
{
    if (!(self->flags & F_FAST) || (count == 1 && n >= CLAIM_MIN) || n > UINT32_MAX) {
        return Q_GENERAL;
    }
    uint64_t rec = (n + 23) & ~(uint64_t)7;
    if (rec > self->size) {
        return Q_GENERAL; /* the general path raises MessageTooLarge */
    }
    int got = lock_fast(self->pm);
    if (got == SHM_BUSY || got < 0) {
        return Q_GENERAL; /* busy, or a mutex error the general path reports */
    }
    if (got == SHM_OWNER_DIED) {
        if (!(self->flags & F_TWO)) {
            /* one lock: its holder may have been anywhere; repair under both */
            wr(self, Q_STATE, rd(self, Q_STATE) | ST_REPAIR);
            pthread_mutex_unlock(self->pm);
            return Q_GENERAL;
        }
        /* our side now; the rest (and the recovery count) at the next holder of both */
        repair_producers(self);
        wr(self, Q_PDIED, 1);
    }
    /* acquire: pairs with the release in unlock() of whoever changed state under both */
    uint64_t st = shm_load64(W(self, Q_STATE));
    uint64_t tail = rd(self, Q_TAIL); /* ours: P held */
    /* acquire: pairs with the consumer's release store of head: it has finished
     * reading the space it freed before we overwrite it */
    uint64_t head = shm_load64(W(self, Q_HEAD));
    uint64_t used = tail - head;
    uint64_t i = tail % self->size;
    int res;
    if ((st & ST_BUSY) || (tail & 7) || used > self->size) {
        res = Q_GENERAL;
    }
    else if (used > self->size - rec) {
        res = Q_FULL;
    }
    else if (i + rec > self->size) {
        res = Q_GENERAL; /* wraps around the ring's end */
    }
    else {
        uint64_t seq = rd(self, Q_PUTS);
        if (seq > UINT64_MAX - count || tail > UINT64_MAX - rec) {
            res = Q_GENERAL; /* corrupt counters: the general path reports */
        }
        else {
            char *r = self->ring + i;
            shm_crash("queue.put.reserved");
            if (__builtin_expect(shm_crash_at != NULL || shm_stop_at != NULL, 0) && n > 1) {
                memcpy(r + Q_HDR, data, n / 2);
                shm_crash("queue.put.copying");
            }
            shm_copy(r + Q_HDR, data, n);
            uint64_t w0 = n | (seq & M32) << 32;
            shm_set_relaxed64(r, w0);
            shm_set_relaxed64(r + 8, hcheck(w0, tail, count == 1 ? SALT : SALT_BATCH));
            shm_crash("queue.put.copied");
            wr(self, Q_PUTS, seq + count);
            shm_crash("queue.put.counted");
            /* release: publishes payload, header and puts; pairs with the
             * acquire load of tail in the consumers' paths */
            shm_store64(W(self, Q_TAIL), tail + rec);
            shm_crash("queue.put.published");
            res = Q_OK;
        }
    }
    pthread_mutex_unlock(self->pm);
    if (res == Q_OK && (st >> ST_GW_SHIFT) & ST_GW_MASK) {
        uint64_t waiting = (st >> ST_GW_SHIFT) & ST_GW_MASK;
        wake(self, Q_GWAKE, (int)(waiting < count ? waiting : count));
    }
    return res;
}

/* put(data, count) -> 0 published | 1 full | 2 general path */
static PyObject *
Ring_put(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(data, count)");
        return NULL;
    }
    long count = PyLong_AsLong(args[1]);
    if (count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (count < 1) {
        PyErr_SetString(PyExc_ValueError, "count must be >= 1");
        return NULL;
    }
    if (ring_ready(self)) {
        return NULL;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_CONTIG_RO) < 0) {
        return NULL;
    }
    int r = ring_put(self, (const char *)src.buf, (uint64_t)src.len, (uint64_t)count);
    PyBuffer_Release(&src);
    return PyLong_FromLong(r);
}

/* ================================================================ get */

/* A batch record's payload at p (n bytes, in bounds): message j's [b, e) in the
 * data that follows the offsets. Returns the count k, or 0 if malformed. */
static uint32_t
batch_count(const char *p, uint64_t n, uint64_t *first, uint64_t *total)
{
    if (n < 8) {
        return 0;
    }
    uint32_t k;
    memcpy(&k, p, 4);
    if (k == 0 || (uint64_t)k > (n - 4) / 4) {
        return 0;
    }
    *first = 4 + 4 * (uint64_t)k;
    *total = n - *first;
    uint32_t last;
    memcpy(&last, p + *first - 4, 4);
    return last == *total ? k : 0;
}

static inline int
batch_span(const char *p, uint32_t j, uint64_t total, uint64_t *b, uint64_t *e)
{
    uint32_t lo = 0, hi;
    if (j) {
        memcpy(&lo, p + 4 * (uint64_t)j, 4);
    }
    memcpy(&hi, p + 4 + 4 * (uint64_t)j, 4);
    if (!(lo <= hi && hi <= total)) {
        return -1;
    }
    *b = lo;
    *e = hi;
    return 0;
}

/* Where a consumer fast path stands after taking C. */
typedef struct {
    uint64_t st, head, gets, used;
} take_t;

/* Take C and look at the queue. Q_OK (C held), Q_EMPTY or Q_GENERAL (released).
 * `fresh`: read tail now rather than trust the hint (get_many looks at all of it). */
static int
take_begin(RingObject *self, take_t *t, int fresh)
{
    if (!(self->flags & F_FAST)) {
        return Q_GENERAL;
    }
    /* a glance without the lock: never lock just to find nothing */
    uint64_t head = shm_load64(W(self, Q_HEAD));
    if (self->tc <= head && shm_load64(W(self, Q_TAIL)) == head) {
        return Q_EMPTY;
    }
    int got = lock_fast(self->cm);
    if (got == SHM_BUSY || got < 0) {
        return Q_GENERAL;
    }
    if (got == SHM_OWNER_DIED) {
        /* we may not wait for P here (lock order): mark the repair due; the
         * general path takes both and repairs */
        wr(self, Q_STATE, rd(self, Q_STATE) | ST_REPAIR);
        pthread_mutex_unlock(self->cm);
        return Q_GENERAL;
    }
    t->st = shm_load64(W(self, Q_STATE));
    t->head = rd(self, Q_HEAD); /* ours: C held */
    t->gets = rd(self, Q_GETS);
    /* The tail we saw last is still good while it is ahead of head (it was
     * read with acquire under this lock): reading the producers' line only
     * when we catch up keeps it in their cache. */
    uint64_t used = self->tc - t->head;
    if (fresh || used == 0 || used > self->size) {
        /* acquire: pairs with the release store of tail in ring_put */
        self->tc = shm_load64(W(self, Q_TAIL));
        used = self->tc - t->head;
    }
    t->used = used;
    if (used == 0) {
        pthread_mutex_unlock(self->cm);
        return Q_EMPTY;
    }
    if (used > self->size || ((t->head | self->tc) & 7) || (t->st & ST_REPAIR)) {
        pthread_mutex_unlock(self->cm);
        return Q_GENERAL;
    }
    return Q_OK;
}

/* Commit a take (C held): head, then gets — a consumer killed between them
 * has consumed, and never repeats. Then unlock and wake producers. */
static void
take_commit(RingObject *self, const take_t *t, uint64_t pos, uint64_t seq)
{
    shm_crash("queue.get.copied");
    if (pos != t->head) {
        /* release: our reads of the records are done before a producer that
         * acquires head reuses their space */
        shm_store64(W(self, Q_HEAD), pos);
        shm_crash("queue.get.advanced");
    }
    wr(self, Q_GETS, seq);
    shm_crash("queue.get.counted");
    pthread_mutex_unlock(self->cm);
    if (t->st >> ST_PW_SHIFT) {
        wake(self, Q_PWAKE, INT_MAX);
    }
}

/* The single record (or one message of the batch) at head, if valid and not
 * wrapping: its payload's start p and size n, how far head and gets move. */
static int
front(RingObject *self, const take_t *t, const char **p, uint64_t *n, uint64_t *advance)
{
    uint64_t i = t->head % self->size;
    if (i > self->size - Q_HDR) {
        return -1;
    }
    const char *r = self->ring + i;
    uint64_t w0 = shm_relaxed64(r), w1 = shm_relaxed64(r + 8);
    uint64_t len = w0 & M32;
    uint64_t rec = (len + 23) & ~(uint64_t)7;
    if (rec > t->used || i + len > self->size - Q_HDR) {
        return -1;
    }
    if (w1 == hcheck(w0, t->head, SALT)) {
        if ((w0 >> 32) != (t->gets & M32) || len >= CLAIM_MIN) {
            return -1;
        }
        *p = r + Q_HDR;
        *n = len;
        *advance = rec;
        return 0;
    }
    if (w1 != hcheck(w0, t->head, SALT_BATCH)) {
        return -1;
    }
    uint64_t first, total, b, e;
    uint32_t k = batch_count(r + Q_HDR, len, &first, &total);
    uint64_t skip = (t->gets - (w0 >> 32)) & M32;
    if (k == 0 || skip >= k || batch_span(r + Q_HDR, (uint32_t)skip, total, &b, &e)) {
        return -1;
    }
    *p = r + Q_HDR + first + b;
    *n = e - b;
    *advance = skip + 1 == k ? rec : 0; /* its last message frees the record */
    return 0;
}

/* get() -> bytes | 1 empty | 2 general path */
static PyObject *
Ring_get(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self)) {
        return NULL;
    }
    take_t t;
    int r = take_begin(self, &t, 0);
    if (r != Q_OK) {
        return PyLong_FromLong(r);
    }
    const char *p;
    uint64_t n, advance;
    if (front(self, &t, &p, &n, &advance)) {
        pthread_mutex_unlock(self->cm);
        return PyLong_FromLong(Q_GENERAL);
    }
    shm_crash("queue.get.locked");
    PyObject *out = PyBytes_FromStringAndSize(p, (Py_ssize_t)n);
    if (out == NULL) {
        pthread_mutex_unlock(self->cm); /* nothing taken */
        return NULL;
    }
    take_commit(self, &t, t.head + advance, t.gets + 1);
    return out;
}

/* get_into(buffer) -> size | -1 empty | -2 general path (also: too small) */
static PyObject *
Ring_get_into(RingObject *self, PyObject *arg)
{
    if (ring_ready(self)) {
        return NULL;
    }
    Py_buffer dst;
    if (PyObject_GetBuffer(arg, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    take_t t;
    int r = take_begin(self, &t, 0);
    long long res;
    if (r != Q_OK) {
        res = -r;
    }
    else {
        const char *p;
        uint64_t n, advance;
        if (front(self, &t, &p, &n, &advance) || n > (uint64_t)dst.len) {
            pthread_mutex_unlock(self->cm);
            res = -Q_GENERAL;
        }
        else {
            shm_crash("queue.get.locked");
            memcpy(dst.buf, p, n);
            take_commit(self, &t, t.head + advance, t.gets + 1);
            res = (long long)n;
        }
    }
    PyBuffer_Release(&dst);
    return PyLong_FromLongLong(res);
}

/* get_many(limit) -> (list, more) | 1 empty | 2 general path.
 * Valid records before the ring's end, at most `limit` messages; stops at the
 * first that wraps, is large or fails a check (`more`: the general path should
 * take the rest now). */
static PyObject *
Ring_get_many(RingObject *self, PyObject *arg)
{
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (limit < 1) {
        PyErr_SetString(PyExc_ValueError, "limit must be >= 1");
        return NULL;
    }
    if (ring_ready(self)) {
        return NULL;
    }
    take_t t;
    int r = take_begin(self, &t, 1);
    if (r != Q_OK) {
        return PyLong_FromLong(r);
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        pthread_mutex_unlock(self->cm);
        return NULL;
    }
    uint64_t size = self->size;
    uint64_t tail = t.head + t.used;
    uint64_t i = t.head % size;
    uint64_t end = t.head + (size - i); /* stream position of the ring's end */
    if (tail < end) {
        end = tail;
    }
    uint64_t pos = t.head, seq = t.gets;
    const char *rp = self->ring + i;
    int stop_large = 0;
    while (pos + Q_HDR <= end && limit > 0) {
        uint64_t w0 = shm_relaxed64(rp), w1 = shm_relaxed64(rp + 8);
        uint64_t n = w0 & M32;
        uint64_t rec = (n + 23) & ~(uint64_t)7;
        if (rec > end - pos) {
            break;
        }
        const char *p = rp + Q_HDR;
        if (w1 == hcheck(w0, pos, SALT) && (w0 >> 32) == (seq & M32)) {
            if (n >= CLAIM_MIN) {
                stop_large = 1;
                break;
            }
            shm_crash("queue.get.locked");
            PyObject *b = PyBytes_FromStringAndSize(p, (Py_ssize_t)n);
            if (b == NULL || PyList_Append(out, b) < 0) {
                Py_XDECREF(b);
                goto fail;
            }
            Py_DECREF(b);
            limit--;
            seq++;
        }
        else if (w1 == hcheck(w0, pos, SALT_BATCH)) {
            uint64_t skip = (seq - (w0 >> 32)) & M32, first, total, b, e;
            uint32_t k = batch_count(p, n, &first, &total);
            if (k == 0 || skip >= k || (skip && pos != t.head)) {
                break;
            }
            shm_crash("queue.get.locked");
            uint64_t j = skip;
            int bad = 0;
            for (; j < k && limit > 0; j++, limit--) {
                if (batch_span(p, (uint32_t)j, total, &b, &e)) {
                    bad = 1;
                    break;
                }
                PyObject *m = PyBytes_FromStringAndSize(p + first + b, (Py_ssize_t)(e - b));
                if (m == NULL || PyList_Append(out, m) < 0) {
                    Py_XDECREF(m);
                    goto fail;
                }
                Py_DECREF(m);
            }
            if (bad) {
                /* a malformed batch: return none of it; the general path skips it */
                if (PyList_SetSlice(out, PyList_GET_SIZE(out) - (Py_ssize_t)(j - skip),
                                    PyList_GET_SIZE(out), NULL) < 0) {
                    goto fail;
                }
                limit += (Py_ssize_t)(j - skip);
                break;
            }
            seq += j - skip;
            if (j < k) {
                break; /* the rest of this batch stays at head */
            }
        }
        else {
            break;
        }
        rp += rec;
        pos += rec;
    }
    int more = pos < tail && limit > 0 && !stop_large;
    if (PyList_GET_SIZE(out) == 0) {
        pthread_mutex_unlock(self->cm);
        Py_DECREF(out);
        return PyLong_FromLong(Q_GENERAL);
    }
    take_commit(self, &t, pos, seq);
    PyObject *res = Py_BuildValue("(NO)", out, more ? Py_True : Py_False);
    return res;
fail:
    pthread_mutex_unlock(self->cm); /* nothing committed: nothing taken */
    Py_DECREF(out);
    return NULL;
}

/* ================================================================ waiting */

static int
ready(RingObject *self, int putter, uint64_t need)
{
    /* acquire: pairs with the release stores of tail/head; a hint only */
    uint64_t st = shm_load64(W(self, Q_STATE));
    if (st & ST_SHUT) {
        return 1;
    }
    uint64_t head = shm_load64(W(self, Q_HEAD));
    uint64_t tail = shm_load64(W(self, Q_TAIL));
    if (!putter) {
        return tail != head;
    }
    if (st & ST_RESERVED) {
        return 0;
    }
    uint64_t from = (st & ST_CLAIMED) ? shm_load64(W(self, Q_CLAIM)) : head;
    uint64_t used = tail - from;
    return used <= self->size && self->size - used >= need;
}

/* poll(putter, need, seconds) -> 1 ready | 0 not within seconds | -1 preempted.
 * Spins without any lock (pause between looks). Gives up at once when a gap
 * between two looks shows this thread was descheduled: there are fewer free
 * cores than runnable threads, and spinning would only take the peer's. */
static PyObject *
Ring_poll(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "poll(putter, need, seconds)");
        return NULL;
    }
    int putter = PyObject_IsTrue(args[0]);
    unsigned long long need = PyLong_AsUnsignedLongLong(args[1]);
    double seconds = PyFloat_AsDouble(args[2]);
    if (putter < 0 || PyErr_Occurred() || ring_ready(self)) {
        return NULL;
    }
    double last = shm_monotonic(), end = last + seconds;
    for (;;) {
        for (int k = 0; k < 32; k++) {
            if (ready(self, putter, need)) {
                return PyLong_FromLong(1);
            }
            SHM_PAUSE();
        }
        double now = shm_monotonic();
        if (now - last > PREEMPTED) {
            return PyLong_FromLong(-1);
        }
        if (now >= end) {
            return PyLong_FromLong(0);
        }
        last = now;
    }
}

static int
side_word(PyObject *arg)
{
    int putter = PyObject_IsTrue(arg);
    return putter < 0 ? -1 : (putter ? Q_PWAKE : Q_GWAKE);
}

/* wake_value(putter) -> the side's futex word (read under the lock when registering) */
static PyObject *
Ring_wake_value(RingObject *self, PyObject *arg)
{
    int off = side_word(arg);
    if (off < 0 || ring_ready(self)) {
        return NULL;
    }
    /* acquire: pairs with the release increment in wake() */
    return PyLong_FromUnsignedLong(shm_load32(W(self, off)));
}

/* wake(putter, n): bump the side's futex word, wake up to n sleepers */
static PyObject *
Ring_wake(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wake(putter, n)");
        return NULL;
    }
    int off = side_word(args[0]);
    long n = PyLong_AsLong(args[1]);
    if (off < 0 || (n == -1 && PyErr_Occurred()) || ring_ready(self)) {
        return NULL;
    }
    if (n > 0) {
        wake(self, off, n > INT_MAX ? INT_MAX : (int)n);
    }
    Py_RETURN_NONE;
}

/* sleep(putter, expected, seconds) -> False on timeout. GIL released; a
 * signal handler's exception propagates. */
static PyObject *
Ring_sleep(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "sleep(putter, expected, seconds)");
        return NULL;
    }
    int off = side_word(args[0]);
    unsigned long expected = PyLong_AsUnsignedLong(args[1]);
    double seconds = PyFloat_AsDouble(args[2]);
    if (off < 0 || PyErr_Occurred() || ring_ready(self)) {
        return NULL;
    }
    if (isnan(seconds) || seconds < 0) {
        seconds = 0;
    }
    uint32_t *word = (uint32_t *)W(self, off);
    int rc;
    self->v.inflight++;
    Py_BEGIN_ALLOW_THREADS
    rc = shm_futex_wait(word, (uint32_t)expected, seconds);
    Py_END_ALLOW_THREADS
    shm_view_leave(&self->v);
    if (PyErr_CheckSignals() < 0) {
        return NULL;
    }
    return PyBool_FromLong(rc == 0);
}

/* ================================================================ general-path locks */

static PyObject *
mutex_of(RingObject *self, int producer)
{
    return (producer && (self->flags & F_TWO)) ? self->pmutex : self->cmutex;
}

/* lock(producer, timeout) -> OK | OWNER_DIED | BUSY (timed out).
 * Takes P (producer) or C through its _core.Mutex and, in the same call,
 * records a dead holder in shared memory (P: pdied; C: repair due) so that
 * no exception can lose it before the repair. */
static PyObject *
Ring_lock(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lock(producer, timeout)");
        return NULL;
    }
    int producer = PyObject_IsTrue(args[0]);
    if (producer < 0 || ring_ready(self)) {
        return NULL;
    }
    PyObject *res = PyObject_CallMethod(mutex_of(self, producer), "acquire", "OO", args[1],
                                        Py_True);
    if (res == NULL) {
        return NULL;
    }
    long got = PyLong_AsLong(res);
    Py_DECREF(res);
    if (got == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (got == SHM_BUSY) {
        return PyLong_FromLong(got);
    }
    if (self->v.closed) {
        /* closed meanwhile: release what we took (the memory is still mapped) */
        PyObject *r = PyObject_CallMethod(mutex_of(self, producer), "release_if_held", NULL);
        Py_XDECREF(r);
        if (r != NULL) {
            PyErr_SetString(E.closed, "the queue's handle is closed");
        }
        return NULL;
    }
    int is_c = !producer || !(self->flags & F_TWO);
    if (is_c && (self->flags & F_FLOCK)) {
        /* flock backend: a dirty word left set means its holder died */
        if (rd(self, Q_DIRTY)) {
            got = SHM_OWNER_DIED;
        }
        wr(self, Q_DIRTY, 1);
    }
    if (got == SHM_OWNER_DIED) {
        if (is_c) {
            wr(self, Q_STATE, rd(self, Q_STATE) | ST_REPAIR);
        }
        else {
            wr(self, Q_PDIED, 1);
        }
    }
    return PyLong_FromLong(got);
}

/* unlock(bad) -> None: release C then P if this thread holds them. With bad
 * (an exception left a critical section), mark the repair due first, exactly
 * as a death does. */
static PyObject *
Ring_unlock(RingObject *self, PyObject *arg)
{
    int bad = PyObject_IsTrue(arg);
    if (bad < 0) {
        return NULL;
    }
    PyObject *held = PyObject_GetAttrString(self->cmutex, "held");
    if (held == NULL) {
        return NULL;
    }
    int c_held = PyObject_IsTrue(held);
    Py_DECREF(held);
    if (c_held < 0) {
        return NULL;
    }
    int alive = !self->v.closed && self->v.base != NULL;
    if (c_held && alive) {
        if (bad) {
            wr(self, Q_STATE, rd(self, Q_STATE) | ST_REPAIR);
        }
        if (self->flags & F_FLOCK) {
            wr(self, Q_DIRTY, 0);
        }
    }
    PyObject *r1 = PyObject_CallMethod(self->cmutex, "release_if_held", NULL);
    PyObject *r2 = NULL;
    if (self->flags & F_TWO) {
        /* P even if C's release failed: never leave it held */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        r2 = PyObject_CallMethod(self->pmutex, "release_if_held", NULL);
        if (t != NULL) {
            Py_XDECREF(r2);
            r2 = NULL;
            PyErr_Restore(t, v, tb);
        }
        else if (r2 == NULL) {
            Py_XDECREF(r1);
            return NULL;
        }
    }
    Py_XDECREF(r2);
    if (r1 == NULL) {
        if (!alive && PyErr_ExceptionMatches(E.closed)) {
            PyErr_Clear(); /* closed handle: closing its lock file released it */
            Py_RETURN_NONE;
        }
        return NULL;
    }
    Py_DECREF(r1);
    Py_RETURN_NONE;
}

/* ================================================================ life cycle */

static int
Ring_init(RingObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *buf, *cmutex, *pmutex;
    long long body_off;
    unsigned long long size, cap;
    int flags;
    static char *kwlist[] = {"buffer", "body_offset", "ring", "capacity", "flags",
                             "cmutex", "pmutex", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OLKKiOO:Ring", kwlist, &buf, &body_off, &size,
                                     &cap, &flags, &cmutex, &pmutex)) {
        return -1;
    }
    if (self->v.have_buf) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is already initialised");
        return -1;
    }
    if (size % 8 || size < Q_HDR + 8 || cap != size - Q_HDR || size > (1ull << 40)) {
        PyErr_Format(E.layout_error, "invalid ring of %llu bytes (capacity %llu)", size, cap);
        return -1;
    }
    if (shm_view_init(&self->v, buf) < 0) {
        return -1;
    }
    if (shm_check(&E, &self->v, body_off, Q_RING + (long long)size, 64)) {
        shm_view_close(&self->v);
        return -1;
    }
    self->body = self->v.base + body_off;
    self->ring = self->body + Q_RING;
    self->size = size;
    self->cap = cap;
    self->flags = flags;
    self->cm = (pthread_mutex_t *)(self->body + Q_MUTEX_C);
    self->pm = (pthread_mutex_t *)(self->body + ((flags & F_TWO) ? Q_MUTEX_P : Q_MUTEX_C));
    Py_XSETREF(self->cmutex, Py_NewRef(cmutex));
    Py_XSETREF(self->pmutex, Py_NewRef(pmutex));
    self->tc = 0;
    return 0;
}

static void
Ring_dealloc(RingObject *self)
{
    self->v.inflight = 0;
    shm_view_close(&self->v);
    Py_XDECREF(self->cmutex);
    Py_XDECREF(self->pmutex);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Ring_close(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    shm_view_close(&self->v);
    Py_RETURN_NONE;
}

static PyObject *
Ring_get_closed(RingObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->v.closed);
}

static PyMethodDef Ring_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Ring_put, METH_FASTCALL,
     "put(data, count) -> 0 published | 1 full | 2 general path"},
    {"get", (PyCFunction)Ring_get, METH_NOARGS, "get() -> bytes | 1 empty | 2 general path"},
    {"get_into", (PyCFunction)Ring_get_into, METH_O,
     "get_into(buffer) -> size | -1 empty | -2 general path"},
    {"get_many", (PyCFunction)Ring_get_many, METH_O,
     "get_many(limit) -> (list, more) | 1 empty | 2 general path"},
    {"poll", (PyCFunction)(void (*)(void))Ring_poll, METH_FASTCALL,
     "poll(putter, need, seconds) -> 1 ready | 0 not yet | -1 preempted"},
    {"wake_value", (PyCFunction)Ring_wake_value, METH_O, "wake_value(putter) -> futex word"},
    {"wake", (PyCFunction)(void (*)(void))Ring_wake, METH_FASTCALL, "wake(putter, n)"},
    {"sleep", (PyCFunction)(void (*)(void))Ring_sleep, METH_FASTCALL,
     "sleep(putter, expected, seconds) -> False on timeout"},
    {"lock", (PyCFunction)(void (*)(void))Ring_lock, METH_FASTCALL,
     "lock(producer, timeout) -> OK | OWNER_DIED | BUSY"},
    {"unlock", (PyCFunction)Ring_unlock, METH_O, "unlock(bad): release C then P if held"},
    {"close", (PyCFunction)Ring_close, METH_NOARGS, "release the mapping"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Ring_getset[] = {
    {"closed", (getter)Ring_get_closed, NULL, "True once closed", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkit._core._queue.Ring",
    .tp_doc = "Ring(buffer, body_offset, ring, capacity, flags, cmutex, pmutex): a queue's "
              "hot paths.",
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
queue_crash_point(PyObject *Py_UNUSED(m), PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) {
        return NULL;
    }
    shm_crash(name);
    Py_RETURN_NONE;
}

static PyObject *
queue_crash_reload(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    shm_crash_load();
    Py_RETURN_NONE;
}

static PyMethodDef queue_methods[] = {
    {"crash_point", queue_crash_point, METH_O,
     "crash_point(name): the queue's crash points share the C paths' counter (tests)"},
    {"crash_reload", queue_crash_reload, METH_NOARGS,
     "re-read SHMKIT_CRASH_AT / SHMKIT_CRASH_AFTER (tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef queue_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmkit._core._queue",
    .m_doc = "The Queue's hot paths: whole critical sections over the ring, and its waits.",
    .m_size = -1,
    .m_methods = queue_methods,
};

PyMODINIT_FUNC
PyInit__queue(void)
{
    if (shm_errors_load(&E)) {
        return NULL;
    }
    shm_crash_load();
    if (PyType_Ready(&RingType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&queue_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0 ||
        PyModule_AddIntConstant(m, "OK", Q_OK) < 0 ||
        PyModule_AddIntConstant(m, "FULL", Q_FULL) < 0 ||
        PyModule_AddIntConstant(m, "EMPTY", Q_EMPTY) < 0 ||
        PyModule_AddIntConstant(m, "GENERAL", Q_GENERAL) < 0 ||
        PyModule_AddIntConstant(m, "F_FAST", F_FAST) < 0 ||
        PyModule_AddIntConstant(m, "F_TWO", F_TWO) < 0 ||
        PyModule_AddIntConstant(m, "F_FLOCK", F_FLOCK) < 0 ||
        PyModule_AddIntConstant(m, "GWAKE", Q_GWAKE) < 0 ||
        PyModule_AddIntConstant(m, "PWAKE", Q_PWAKE) < 0 ||
        PyModule_AddIntConstant(m, "RING_OFF", Q_RING) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
