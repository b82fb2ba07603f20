/* shmkit._core._queue — the Queue's hot paths, each one whole critical section.
 *
 *   Ring        built over a queue's mapping (see the layout comment in
 *               shmkit/_shm/queue_ring.py, QUE4). put / put_many / get /
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
 *               segment (one per side), woken only when someone sleeps. A
 *               put that found the ring full spins for some room past its
 *               own record (room_goal), not the first free byte.
 *
 * Memory model (pairs named at each access):
 *   producer  payload, record header, puts (relaxed), then tail (release)
 *   consumer  tail (acquire), payload, then head (release), then gets
 *   producer  head (acquire) before reusing space the consumer freed
 * Each side keeps a private hint of the other's index, read with that acquire
 * under its own lock: the consumer's tail (tc), re-read only when it has
 * caught up; the producer's head (hp), re-read only when the hint leaves no
 * room. Indices only move forward, so a stale hint only understates what is
 * there (fewer messages, less room), and every byte a hint lets a side touch
 * was handed over by the acquire that read it.
 * Everything else a side touches is under its own lock (P or C); words both
 * sides change (state, waiter counts) change only under both.
 *
 * Every offset and length read from shared memory is checked before use: a
 * record that fails a check sends the call to the general path, which skips
 * and counts it (or raises LayoutError for corrupt indices).
 */
#include "shm.h"

#include <structmember.h>

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
#define Q_GSLEEP 336 /* u32 consumers inside futex_wait on gwake (QUE5) */
#define Q_PSLEEP 340 /* u32 producers inside futex_wait on pwake */
/* Tasks (task_done/join, QUE5): a take's intent on the consumers' line, then
 * the task words and the per-slot tables (see queue_ring.py). */
#define Q_I_WHO 144  /* slot + 1 of the take in progress (0: none to check) */
#define Q_I_GETS 152 /* gets once that take commits */
#define Q_I_NEW 160  /* taken[slot] once that take commits */
#define Q_RETIRED 960   /* tasks finished for no live slot (discards, dead consumers) */
#define Q_JWAKE 968     /* u32 futex word joiners sleep on */
#define Q_JWAIT 972     /* u32 joiners asleep (a hint for wakers) */
#define Q_ABANDONED 976 /* tasks settled for consumers that died or closed */
#define Q_TAKEN 1024    /* u64 x 65: messages each attach slot took (slot 64: shared) */
#define Q_DONE 1600     /* u64 x 65: task_done() calls credited to each slot */
#define Q_ACCT_SLOTS 65
#define Q_RING 2176
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
    uint64_t hp; /* head as this handle's put last read it (a hint, under P) */
    /* QueueCore (the public methods) only: */
    PyObject *decode;  /* the codec's decode; NULL for raw bytes */
    double spin;       /* base spin budget, seconds (Queue.spin) */
    double spin_now;   /* adaptive budget (queue_repair._adapt_spin) */
    double calm_until; /* no spinning before this (monotonic): a loaded machine */
    uint64_t id_word;  /* who claims/reserves: pid | tag << 32 (queue_ring.identity) */
    uint64_t id_ticks; /* and its start time */
    long id_pid;       /* the process those were made for (a forked child differs) */
    int slot;          /* this handle's attach slot (64: none), for task accounting */
    unsigned long slot_gen; /* fork_gen when slot was set: a forked child uses 64 */
    int pend;          /* our reservation (PEND_RES) / claim (PEND_CLAIM) left marked */
    uint64_t pend_res_pos, pend_claim_pos;
    uint64_t pend_res_who, pend_claim_who; /* the identity words they carry */
} RingObject;

#define W(self, off) ((self)->body + (off))

static uint64_t drop_pending(RingObject *self);

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

/* Bumped in a forked child: an inherited handle's attach slot is its parent's. */
static unsigned long fork_gen;

static void
queue_after_fork_child(void)
{
    fork_gen++;
}

/* The slot whose taken/done words this handle's takes and task_done() use. */
static inline int
acct_slot(const RingObject *self)
{
    return self->slot_gen == fork_gen ? self->slot : Q_ACCT_SLOTS - 1;
}

static inline uint64_t *
taken_word(RingObject *self, int s)
{
    return (uint64_t *)W(self, Q_TAKEN + 8 * s);
}

static inline uint64_t *
done_word(RingObject *self, int s)
{
    return (uint64_t *)W(self, Q_DONE + 8 * s);
}

/* Before committing a take of k messages (C held): record the intent, so a
 * death between the commit and the taken store below is repaired exactly
 * (_r_repair_intent, called by queue_repair._recover). Returns taken[slot] after. */
static inline uint64_t
take_intent(RingObject *self, uint64_t gets_after, uint64_t k)
{
    int s = acct_slot(self);
    uint64_t nt = __atomic_load_n(taken_word(self, s), __ATOMIC_RELAXED) + k;
    wr(self, Q_I_GETS, gets_after);
    wr(self, Q_I_NEW, nt);
    if (rd(self, Q_I_WHO) != (uint64_t)s + 1) {
        wr(self, Q_I_WHO, (uint64_t)s + 1);
    }
    return nt;
}

/* After the commit (C held): this slot took them. Relaxed: only C holders
 * write it; task_done() reads it as a bound. */
static inline void
take_taken(RingObject *self, uint64_t nt)
{
    __atomic_store_n(taken_word(self, acct_slot(self)), nt, __ATOMIC_RELAXED);
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
static inline int
lock_fast(pthread_mutex_t *m)
{
    return shm_mutex_spin(m, LOCK_TRIES, LOCK_PAUSES);
}

/* The check word of a record at stream position pos (low 32 bits). */
static inline uint64_t
hcheck(uint64_t w0, uint64_t pos, uint64_t salt)
{
    return (w0 ^ pos ^ salt) & M32;
}

/* The count of threads inside futex_wait on a side's word (u32, beside it). */
static inline uint32_t *
sleepers_of(RingObject *self, int off)
{
    return (uint32_t *)W(self, off == Q_GWAKE ? Q_GSLEEP : off == Q_PWAKE ? Q_PSLEEP : Q_JWAIT);
}

/* Bump a side's futex word and wake its sleepers (only called when the state
 * word counts some registered). release: the waker's stores before are seen
 * by a woken waiter that re-reads the indices. The system call is made only
 * when someone is inside futex_wait: a registered waiter that is awake
 * (spinning, or taking the locks to leave) costs a waker one increment, not
 * a syscall per message. Dekker with sleep(): the sleeper counts itself,
 * then futex_wait compares the word; the waker bumps the word, then reads
 * the count (both sequentially consistent), so one of them sees the other. */
static void
wake(RingObject *self, int off, int n)
{
    uint32_t *word = (uint32_t *)W(self, off);
    __atomic_fetch_add(word, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(sleepers_of(self, off), __ATOMIC_SEQ_CST) == 0) {
        return;
    }
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
/* A batch record's payload (k >= 2 bytes objects): u32 k, k u32 end offsets,
 * the messages back to back (the layout put_many's Python path packs). */
static void
write_batch(char *p, PyObject *const *items, uint64_t k)
{
    uint32_t end = 0;
    uint32_t k32 = (uint32_t)k;
    memcpy(p, &k32, 4);
    for (uint64_t j = 0; j < k; j++) {
        end += (uint32_t)PyBytes_GET_SIZE(items[j]);
        memcpy(p + 4 + 4 * j, &end, 4);
    }
    char *d = p + 4 + 4 * k;
    shm_crash("queue.put.copying");
    for (uint64_t j = 0; j < k; j++) {
        Py_ssize_t m = PyBytes_GET_SIZE(items[j]);
        memcpy(d, PyBytes_AS_STRING(items[j]), (size_t)m);
        d += m;
    }
}

/* `items` (put_many): write a batch of `count` bytes objects in place rather
 * than `data` (n: the batch payload's size). */
static int
ring_put(RingObject *self, const char *data, uint64_t n, uint64_t count, PyObject *const *items)
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
    /* The head we saw last is still good while it leaves room (it was read
     * with acquire under this lock, and head only moves forward: a stale one
     * only understates the room): reading the consumers' line, which every
     * get writes, only when the ring looks full keeps it in their cache. */
    uint64_t used = tail - self->hp;
    if (used > self->size - rec) {
        /* acquire: pairs with the consumer's release store of head: it has
         * finished reading the space it freed before we overwrite it */
        uint64_t head = shm_load64(W(self, Q_HEAD));
        used = tail - head;
        if (used <= self->size) {
            self->hp = head; /* only a head that passed the check */
        }
    }
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
            if (items != NULL) {
                write_batch(r + Q_HDR, items, count);
            }
            else if (__builtin_expect(shm_crash_at != NULL || shm_stop_at != NULL, 0) && n > 1) {
                memcpy(r + Q_HDR, data, n / 2);
                shm_crash("queue.put.copying");
                shm_copy(r + Q_HDR, data, n);
            }
            else {
                shm_copy(r + Q_HDR, data, n);
            }
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
    int r = ring_put(self, (const char *)src.buf, (uint64_t)src.len, (uint64_t)count, NULL);
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
    uint64_t nt = take_intent(self, seq, seq - t->gets);
    shm_crash("queue.get.copied");
    if (pos != t->head) {
        /* release: our reads of the records are done before a producer that
         * acquires head reuses their space */
        shm_store64(W(self, Q_HEAD), pos);
        shm_crash("queue.get.advanced");
    }
    wr(self, Q_GETS, seq);
    shm_crash("queue.get.counted");
    take_taken(self, nt);
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

/* One message from head: its bytes, or NULL with *status EMPTY / GENERAL
 * (nothing touched) or -1 (an exception: nothing taken). */
static PyObject *
get_fast(RingObject *self, int *status)
{
    take_t t;
    int r = take_begin(self, &t, 0);
    if (r != Q_OK) {
        *status = r;
        return NULL;
    }
    const char *p;
    uint64_t n, advance;
    if (front(self, &t, &p, &n, &advance)) {
        pthread_mutex_unlock(self->cm);
        *status = Q_GENERAL;
        return NULL;
    }
    shm_crash("queue.get.locked");
    PyObject *out = PyBytes_FromStringAndSize(p, (Py_ssize_t)n);
    if (out == NULL) {
        pthread_mutex_unlock(self->cm); /* nothing taken */
        *status = -1;
        return NULL;
    }
    take_commit(self, &t, t.head + advance, t.gets + 1);
    *status = Q_OK;
    return out;
}

/* get() -> bytes | 1 empty | 2 general path */
static PyObject *
Ring_get(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self)) {
        return NULL;
    }
    int status;
    PyObject *out = get_fast(self, &status);
    return out != NULL || status < 0 ? out : PyLong_FromLong(status);
}

/* One message into dst: its size | -EMPTY | -GENERAL (also: too small). */
static long long
get_into_fast(RingObject *self, Py_buffer *dst)
{
    take_t t;
    int r = take_begin(self, &t, 0);
    if (r != Q_OK) {
        return -r;
    }
    const char *p;
    uint64_t n, advance;
    if (front(self, &t, &p, &n, &advance) || n > (uint64_t)dst->len) {
        pthread_mutex_unlock(self->cm);
        return -Q_GENERAL;
    }
    shm_crash("queue.get.locked");
    memcpy(dst->buf, p, n);
    take_commit(self, &t, t.head + advance, t.gets + 1);
    return (long long)n;
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
    long long res = get_into_fast(self, &dst);
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

/* A large message in flight (a getter waits for a reservation to be
 * published, a putter for a claim to end) completes within about one copy
 * (~0.1 ms per MiB): spinning this long for it beats a futex sleep, whose
 * wake-up waits behind other runnable threads on a loaded machine. */
#define LARGE_SPIN 2e-3

/* What poll_loop waits for, and how long a large copy in flight keeps it. */
typedef struct {
    RingObject *self;
    int putter;
    uint64_t need;
    double large_end;
    uint64_t copying;
} poll_arg;

static int
poll_ready(void *arg)
{
    poll_arg *p = arg;
    return ready(p->self, p->putter, p->need);
}

static int
poll_linger(void *arg, double now)
{
    poll_arg *p = arg;
    /* relaxed: a hint (the copier's bit, set and cleared under the locks) */
    return now < p->large_end && (shm_relaxed64(W(p->self, Q_STATE)) & p->copying);
}

/* Pause instructions between a waiting producer's looks. Each look loads
 * head, taking the consumers' line, which their next get must then take
 * back: a producer waiting for room (room_goal) looks about once a get
 * (16 pauses: 0.2 µs on the machine this was measured on, up to ~1 µs where
 * a pause is slow), not several times. Consumers look at every pause (a
 * message's latency). */
#define PUT_PAUSES 16

/* Spin without any lock until ready: 1 ready | 0 not within seconds | -1 preempted.
 * Past `seconds`, keeps spinning (up to LARGE_SPIN, never past `most`) while
 * a large message the caller waits for is being copied. */
static int
poll_loop(RingObject *self, int putter, uint64_t need, double seconds, double most)
{
    poll_arg p = {self, putter, need, shm_monotonic() + (most < LARGE_SPIN ? most : LARGE_SPIN),
                  putter ? ST_CLAIMED : ST_RESERVED};
    return shm_spin(poll_ready, poll_linger, &p, seconds, putter ? PUT_PAUSES : 1);
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
    return PyLong_FromLong(poll_loop(self, putter, need, seconds, seconds));
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
    uint32_t *sleepers = sleepers_of(self, off);
    int rc;
    self->v.inflight++;
    /* counted before futex_wait compares the word (see wake()); a sleeper
     * that dies here only costs wakers a needless system call */
    __atomic_fetch_add(sleepers, 1, __ATOMIC_SEQ_CST);
    Py_BEGIN_ALLOW_THREADS
    rc = shm_futex_wait(word, (uint32_t)expected, seconds);
    Py_END_ALLOW_THREADS
    __atomic_fetch_sub(sleepers, 1, __ATOMIC_RELAXED);
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
    if (is_c && self->pend) {
        /* both held now: a reservation or claim we gave up on is dropped first */
        uint64_t st = drop_pending(self);
        if (st >> ST_PW_SHIFT) {
            wake(self, Q_PWAKE, INT_MAX);
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

/* ================================================================ large messages */

/* Messages of CLAIM_MIN bytes or more are copied outside the locks (see
 * queue_ring.py, "Large messages"): a producer reserves the space at tail
 * under both locks, copies with the GIL released, and publishes under both
 * locks; a consumer claims the record at head under both locks (taking it:
 * head, gets), copies it out with the GIL released, and clears the claim
 * under both locks. Who reserved or claimed is recorded as an identity the
 * Python side judges by the attach slot's OFD lock (queue_ring.identity). */

#define Q_RECOV 264
#define Q_CLAIM_ID 296
#define Q_CLAIM_TICKS 304
#define Q_RES_ID 312
#define Q_RES_TICKS 320
#define SLICE 0.05
#define PEND_RES 1
#define PEND_CLAIM 2
/* put_large: the locks stayed busy past the deadline; nothing was put. */
#define Q_LOCKED_OUT 3

static PyObject *Full, *Empty;

typedef struct {
    PyObject *t, *v, *tb;
} exc_t;

/* Copy n bytes into / out of the ring from index idx (< size), wrapping at its end. */
static void
ring_write(RingObject *self, uint64_t idx, const char *src, uint64_t n)
{
    uint64_t k = n < self->size - idx ? n : self->size - idx;
    shm_copy(self->ring + idx, src, k);
    if (n > k) {
        shm_copy(self->ring, src + k, n - k);
    }
}

static void
ring_read(const RingObject *self, uint64_t idx, char *dst, uint64_t n)
{
    uint64_t k = n < self->size - idx ? n : self->size - idx;
    memcpy(dst, self->ring + idx, k);
    if (n > k) {
        memcpy(dst + k, self->ring, n - k);
    }
}

/* The same with the GIL released (the caller keeps the view pinned). */
static void
ring_write_nogil(RingObject *self, uint64_t idx, const char *src, uint64_t n)
{
    Py_BEGIN_ALLOW_THREADS
    ring_write(self, idx, src, n);
    Py_END_ALLOW_THREADS
}

static void
ring_read_nogil(const RingObject *self, uint64_t idx, char *dst, uint64_t n)
{
    Py_BEGIN_ALLOW_THREADS
    ring_read(self, idx, dst, n);
    Py_END_ALLOW_THREADS
}

static void
unlock_both(RingObject *self)
{
    pthread_mutex_unlock(self->cm);
    pthread_mutex_unlock(self->pm);
}

/* After taking P or C from a dead holder: record it exactly as the fast
 * paths do (pdied / repair due); the general path's next holder repairs. */
static void
record_death(RingObject *self, int producer)
{
    if (producer) {
        repair_producers(self);
        wr(self, Q_PDIED, 1);
    }
    else {
        wr(self, Q_STATE, rd(self, Q_STATE) | ST_REPAIR);
    }
}

/* Take m by `end` (monotonic; < 0: no deadline): spin, then sleep in slices
 * with the GIL released. 0 held | 1 timed out | -1 exception (nothing held). */
static int
lock_until(RingObject *self, pthread_mutex_t *m, double end, int producer)
{
    for (;;) {
        int got = lock_fast(m);
        if (got == SHM_BUSY) {
            double left = end < 0 ? SLICE : end - shm_monotonic();
            if (left <= 0) {
                return 1;
            }
            Py_BEGIN_ALLOW_THREADS
            got = shm_mutex_timedlock(m, left < SLICE ? left : SLICE);
            Py_END_ALLOW_THREADS
        }
        if (got == SHM_OK || got == SHM_OWNER_DIED) {
            if (got == SHM_OWNER_DIED) {
                record_death(self, producer);
            }
            return 0;
        }
        if (got < 0) {
            shm_mutex_error(&E, got);
            return -1;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

/* Both locks (P, then C) by `end`, to end a reservation or claim. A signal
 * handler's exception (Ctrl-C) meanwhile is kept in *x and leaves one more
 * second. 0 held | 1 not held. */
static int
lock_both_until(RingObject *self, double end, exc_t *x)
{
    for (int producer = 1; producer >= 0; producer--) {
        for (;;) {
            int r = lock_until(self, producer ? self->pm : self->cm, end, producer);
            if (r == 0) {
                break;
            }
            if (r < 0 && x->t == NULL) {
                PyErr_Fetch(&x->t, &x->v, &x->tb);
                double more = shm_monotonic() + 1.0;
                end = (end < 0 || more < end) ? more : end;
                continue;
            }
            if (r < 0) {
                PyErr_Clear(); /* a second one: the first is raised */
            }
            if (!producer) {
                pthread_mutex_unlock(self->pm);
            }
            return 1;
        }
    }
    return 0;
}

/* Both locks, spinning only: 0 held | 1 busy (none held). */
static int
lock_both_fast(RingObject *self)
{
    int got = lock_fast(self->pm);
    if (got == SHM_BUSY || got < 0) {
        return 1;
    }
    if (got == SHM_OWNER_DIED) {
        record_death(self, 1);
    }
    got = lock_fast(self->cm);
    if (got == SHM_BUSY || got < 0) {
        pthread_mutex_unlock(self->pm);
        return 1;
    }
    if (got == SHM_OWNER_DIED) {
        record_death(self, 0);
    }
    return 0;
}

/* Drop a reservation or claim of ours that an earlier call left marked
 * (both locks held); the state word after. */
static uint64_t
drop_pending(RingObject *self)
{
    uint64_t st = rd(self, Q_STATE);
    if ((self->pend & PEND_RES) && (st & ST_RESERVED) && rd(self, Q_RES_ID) == self->pend_res_who &&
        rd(self, Q_TAIL) == self->pend_res_pos) {
        st &= ~(uint64_t)ST_RESERVED; /* never published: tail and puts are before it */
    }
    if ((self->pend & PEND_CLAIM) && (st & ST_CLAIMED) &&
        rd(self, Q_CLAIM_ID) == self->pend_claim_who &&
        rd(self, Q_CLAIM) == self->pend_claim_pos) {
        st &= ~(uint64_t)ST_CLAIMED;
    }
    self->pend = 0;
    wr(self, Q_STATE, st);
    return st;
}

static int
large_ok(RingObject *self)
{
    return (self->flags & (F_FAST | F_TWO)) == (F_FAST | F_TWO) && self->id_pid == (long)getpid();
}

/* Reserve room for a large record at tail (both locks held): OK (reserved;
 * *tail, *seq say where), FULL or GENERAL. */
static int
reserve(RingObject *self, uint64_t rec, uint64_t *tail, uint64_t *seq)
{
    uint64_t st = self->pend ? drop_pending(self) : rd(self, Q_STATE);
    uint64_t head = rd(self, Q_HEAD), size = self->size;
    uint64_t from = (st & ST_CLAIMED) ? rd(self, Q_CLAIM) : head;
    *tail = rd(self, Q_TAIL);
    *seq = rd(self, Q_PUTS);
    if ((st & (ST_SHUT | ST_RESERVED | ST_REPAIR)) || rd(self, Q_PDIED) ||
        ((*tail | head | from) & 7) || *tail - head > size || head - from > size ||
        *tail - from > size || *seq == UINT64_MAX || *tail > UINT64_MAX - rec) {
        return Q_GENERAL; /* the general path repairs, raises or waits */
    }
    if (size - (*tail - from) < rec) {
        return Q_FULL;
    }
    shm_crash("queue.put.reserved");
    /* the identity first, the bit last: a reader that sees the bit sees who */
    wr(self, Q_RES_ID, self->id_word);
    wr(self, Q_RES_TICKS, self->id_ticks);
    wr(self, Q_STATE, st | ST_RESERVED);
    shm_crash("queue.put.reserving");
    return Q_OK;
}

/* A large put: OK | FULL | GENERAL (nothing done) | Q_LOCKED_OUT (not put:
 * the locks stayed busy; our reservation is dropped later) | -1 exception. */
static int
put_large(RingObject *self, const char *data, uint64_t n, double end)
{
    uint64_t rec = (n + 23) & ~(uint64_t)7;
    uint64_t tail, seq;
    if (!large_ok(self) || n > self->cap || lock_both_fast(self)) {
        return Q_GENERAL;
    }
    int r = reserve(self, rec, &tail, &seq);
    unlock_both(self);
    if (r != Q_OK) {
        return r;
    }
    /* [tail, tail + rec) is ours alone until the bit is cleared */
    shm_crash("queue.put.res_copying");
    uint64_t i = tail % self->size, s = (i + Q_HDR) % self->size;
    if (__builtin_expect(shm_crash_at != NULL || shm_stop_at != NULL, 0)) {
        ring_write(self, s, data, n / 2);
        shm_crash("queue.put.copying");
        ring_write(self, (s + n / 2) % self->size, data + n / 2, n - n / 2);
    }
    else {
        ring_write_nogil(self, s, data, n);
    }
    uint64_t w0 = n | (seq & M32) << 32;
    shm_set_relaxed64(self->ring + i, w0);
    shm_set_relaxed64(self->ring + (i + 8) % self->size, hcheck(w0, tail, SALT));
    shm_crash("queue.put.res_copied");
    exc_t x = {NULL, NULL, NULL};
    if (lock_both_until(self, end, &x)) {
        self->pend |= PEND_RES;
        self->pend_res_pos = tail;
        self->pend_res_who = self->id_word;
        if (x.t != NULL) {
            PyErr_Restore(x.t, x.v, x.tb);
            return -1;
        }
        return Q_LOCKED_OUT;
    }
    uint64_t st = rd(self, Q_STATE);
    int published = 0;
    if ((st & ST_RESERVED) && rd(self, Q_RES_ID) == self->id_word &&
        rd(self, Q_RES_TICKS) == self->id_ticks) {
        if (rd(self, Q_TAIL) == tail && rd(self, Q_PUTS) == seq) {
            wr(self, Q_PUTS, seq + 1);
            shm_crash("queue.put.counted");
            /* release: publishes the payload and header written outside the
             * lock; pairs with the acquire load of tail in the consumers' paths */
            shm_store64(W(self, Q_TAIL), tail + rec);
            shm_crash("queue.put.published");
            published = 1;
        }
        st &= ~(uint64_t)ST_RESERVED;
        wr(self, Q_STATE, st);
    }
    unlock_both(self);
    if (published && ((st >> ST_GW_SHIFT) & ST_GW_MASK)) {
        wake(self, Q_GWAKE, 1);
    }
    if (st >> ST_PW_SHIFT) {
        wake(self, Q_PWAKE, INT_MAX); /* producers that waited for the reservation */
    }
    if (x.t != NULL) {
        PyErr_Restore(x.t, x.v, x.tb);
        return -1;
    }
    return published ? Q_OK : Q_GENERAL; /* not ours any more: put it again */
}

/* Claim the large record at head (both locks held): OK (taken: *pos, *n),
 * EMPTY or GENERAL. `room`: the caller's buffer size (or UINT64_MAX). */
static int
claim(RingObject *self, uint64_t room, uint64_t *pos, uint64_t *n, PyObject **bytes)
{
    uint64_t st = self->pend ? drop_pending(self) : rd(self, Q_STATE);
    uint64_t head = rd(self, Q_HEAD), tail = rd(self, Q_TAIL), gets = rd(self, Q_GETS);
    uint64_t size = self->size, used = tail - head;
    if ((st & (ST_SHUT | ST_CLAIMED | ST_REPAIR)) || rd(self, Q_PDIED) || ((head | tail) & 7) ||
        used > size || gets == UINT64_MAX) {
        return Q_GENERAL;
    }
    if (used == 0) {
        return Q_EMPTY;
    }
    uint64_t i = head % size;
    uint64_t w0 = shm_relaxed64(self->ring + i), w1 = shm_relaxed64(self->ring + (i + 8) % size);
    uint64_t len = w0 & M32, rec = (len + 23) & ~(uint64_t)7;
    if (w1 != hcheck(w0, head, SALT) || (w0 >> 32) != (gets & M32) || len < CLAIM_MIN ||
        len > self->cap || rec > used || len > room) {
        return Q_GENERAL; /* small, batch, corrupt, or too large for the buffer */
    }
    if (room == UINT64_MAX) {
        *bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len); /* before anything is taken */
        if (*bytes == NULL) {
            return -1;
        }
    }
    shm_crash("queue.get.locked");
    /* the claim's fields first, the bit last; then head, then gets */
    wr(self, Q_CLAIM, head);
    wr(self, Q_CLAIM_ID, self->id_word);
    wr(self, Q_CLAIM_TICKS, self->id_ticks);
    wr(self, Q_STATE, st | ST_CLAIMED);
    shm_crash("queue.get.claiming");
    uint64_t nt = take_intent(self, gets + 1, 1);
    shm_crash("queue.get.copied");
    /* release: pairs with the producers' acquire of head (the claim still
     * keeps them off this record's space) */
    shm_store64(W(self, Q_HEAD), head + rec);
    shm_crash("queue.get.advanced");
    wr(self, Q_GETS, gets + 1);
    shm_crash("queue.get.counted");
    take_taken(self, nt);
    *pos = head;
    *n = len;
    return Q_OK;
}

/* A large get into dst (or a new bytes object, *out): OK | EMPTY | GENERAL
 * (nothing taken) | -1 exception (the message, if taken, is lost: at most once). */
static int
get_large(RingObject *self, Py_buffer *dst, PyObject **out, uint64_t *nout, double end)
{
    uint64_t pos, n;
    PyObject *b = NULL;
    if (!large_ok(self) || lock_both_fast(self)) {
        return Q_GENERAL;
    }
    int r = claim(self, dst != NULL ? (uint64_t)dst->len : UINT64_MAX, &pos, &n, &b);
    unlock_both(self);
    if (r != Q_OK) {
        return r;
    }
    shm_crash("queue.get.claim_copying");
    char *to = dst != NULL ? (char *)dst->buf : PyBytes_AS_STRING(b);
    ring_read_nogil(self, (pos % self->size + Q_HDR) % self->size, to, n);
    shm_crash("queue.get.claim_copied");
    exc_t x = {NULL, NULL, NULL};
    if (lock_both_until(self, end, &x)) {
        self->pend |= PEND_CLAIM; /* cleared by our next locked call, or at our death */
        self->pend_claim_pos = pos;
        self->pend_claim_who = self->id_word;
    }
    else {
        uint64_t st = rd(self, Q_STATE);
        if ((st & ST_CLAIMED) && rd(self, Q_CLAIM) == pos && rd(self, Q_CLAIM_ID) == self->id_word) {
            st &= ~(uint64_t)ST_CLAIMED; /* the space is free again */
            wr(self, Q_STATE, st);
        }
        unlock_both(self);
        if (st >> ST_PW_SHIFT) {
            wake(self, Q_PWAKE, INT_MAX);
        }
    }
    if (x.t != NULL) {
        Py_XDECREF(b);
        PyErr_Restore(x.t, x.v, x.tb);
        return -1;
    }
    *out = b;
    *nout = n;
    return Q_OK;
}

/* _copy_in(index, data): the general path's reserved record, copied in (GIL
 * released). _copy_out(index, n, buffer | None) -> bytes | n: a claimed one, out. */
static PyObject *
Ring_copy_in(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_copy_in(index, data)");
        return NULL;
    }
    unsigned long long idx = PyLong_AsUnsignedLongLong(args[0]);
    if (PyErr_Occurred() || ring_ready(self)) {
        return NULL;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(args[1], &src, PyBUF_CONTIG_RO) < 0) {
        return NULL;
    }
    if (idx >= self->size || (uint64_t)src.len > self->cap) {
        PyBuffer_Release(&src);
        PyErr_SetString(E.layout_error, "copy outside the ring");
        return NULL;
    }
    self->v.inflight++;
    if (__builtin_expect(shm_crash_at != NULL || shm_stop_at != NULL, 0) && src.len > 1) {
        uint64_t h = (uint64_t)src.len / 2;
        ring_write(self, idx, src.buf, h);
        shm_crash("queue.put.copying");
        ring_write(self, (idx + h) % self->size, (const char *)src.buf + h, (uint64_t)src.len - h);
    }
    else {
        ring_write_nogil(self, idx, src.buf, (uint64_t)src.len);
    }
    shm_view_leave(&self->v);
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
}

static PyObject *
Ring_copy_out(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_copy_out(index, n, buffer)");
        return NULL;
    }
    unsigned long long idx = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long n = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred() || ring_ready(self)) {
        return NULL;
    }
    if (idx >= self->size || n > self->cap) {
        PyErr_SetString(E.layout_error, "copy outside the ring");
        return NULL;
    }
    Py_buffer dst;
    PyObject *b = NULL;
    char *to;
    if (args[2] == Py_None) {
        b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (b == NULL) {
            return NULL;
        }
        to = PyBytes_AS_STRING(b);
    }
    else {
        if (PyObject_GetBuffer(args[2], &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            return NULL;
        }
        if ((uint64_t)dst.len < n) {
            PyBuffer_Release(&dst);
            PyErr_SetString(PyExc_ValueError, "buffer too small");
            return NULL;
        }
        to = dst.buf;
    }
    self->v.inflight++;
    ring_read_nogil(self, idx, to, n);
    shm_view_leave(&self->v);
    if (b != NULL) {
        return b;
    }
    PyBuffer_Release(&dst);
    return PyLong_FromUnsignedLongLong(n);
}

/* _leave(reservation, pos, who): the general path gave up ending a reservation
 * (or claim) of ours: the next locked call of this handle drops it. */
static PyObject *
Ring_leave(RingObject *self, PyObject *args)
{
    int res;
    unsigned long long pos, who;
    if (!PyArg_ParseTuple(args, "pKK", &res, &pos, &who)) {
        return NULL;
    }
    if (res) {
        self->pend |= PEND_RES;
        self->pend_res_pos = pos;
        self->pend_res_who = who;
    }
    else {
        self->pend |= PEND_CLAIM;
        self->pend_claim_pos = pos;
        self->pend_claim_who = who;
    }
    Py_RETURN_NONE;
}

/* ================================================================ QueueCore */

/* The public put/get family of shmkit.Queue, each one C call from the call
 * site in the common case: arguments and timeout checked first, then the
 * fast path, a bounded spin, the large-message path; only what none of
 * them can finish goes to the Python general path (_put_py, _put_slow,
 * _get_slow, _get_into_py, _get_many_py, _put_many_py on the subclass). */

static PyObject *S_put_py, *S_put_slow, *S_get_slow, *S_get_into_py, *S_get_many_py,
    *S_put_many_py;

/* Keyword/positional arguments by name; out[j] NULL when not given. */
static int
parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
           const char *const *names, int n_names, int required, PyObject **out)
{
    if (nargs > n_names) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fname,
                     n_names, nargs);
        return -1;
    }
    for (int j = 0; j < n_names; j++) {
        out[j] = j < nargs ? args[j] : NULL;
    }
    Py_ssize_t nk = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        int j = 0;
        while (j < n_names && PyUnicode_CompareWithASCIIString(key, names[j]) != 0) {
            j++;
        }
        if (j == n_names) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname,
                         key);
            return -1;
        }
        if (out[j] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[j]);
            return -1;
        }
        out[j] = args[nargs + i];
    }
    for (int j = 0; j < required; j++) {
        if (out[j] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                         names[j]);
            return -1;
        }
    }
    return 0;
}

/* timeout (validated first: shm_parse_timeout) and block=False meaning 0. */
static int
block_timeout(PyObject *block, PyObject *timeout, double *t)
{
    if (shm_parse_timeout(timeout, t)) {
        return -1;
    }
    if (block != NULL) {
        int b = PyObject_IsTrue(block);
        if (b < 0) {
            return -1;
        }
        if (!b) {
            *t = 0;
        }
    }
    return 0;
}

static PyObject *
timeout_obj(double t)
{
    return t < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(t);
}

/* self.<name>(a, b, ...) through vectorcall (the general path). */
static PyObject *
call_py(RingObject *self, PyObject *name, PyObject *a, PyObject *b, PyObject *c, PyObject *d)
{
    PyObject *argv[5] = {(PyObject *)self, a, b, c, d};
    size_t n = 1 + (a != NULL) + (b != NULL) + (c != NULL) + (d != NULL);
    return PyObject_VectorcallMethod(name, argv, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* Spin without a lock while full/empty, up to `budget` (and *t), unless a
 * recent spin found this thread descheduled. 1 ready. Takes the time from *t. */
static int
spin_wait(RingObject *self, int putter, uint64_t need, double *t, double budget)
{
    if (budget <= 0 || *t == 0) {
        return 0;
    }
    double now = shm_monotonic();
    if (now < self->calm_until) {
        return 0;
    }
    double secs = (*t > 0 && *t < budget) ? *t : budget;
    int r = poll_loop(self, putter, need, secs, *t > 0 ? *t : LARGE_SPIN);
    double after = shm_monotonic();
    if (r < 0) {
        self->calm_until = after; /* queue_ring._CALM: 0 */
        self->spin_now = self->spin;
    }
    if (*t > 0) {
        *t = *t - (after - now) > 0 ? *t - (after - now) : 0;
    }
    return r > 0;
}

/* Room a put that found the ring full spins for: its record and ROOM_SLACK
 * more (at most a quarter of the ring). Resuming at the first free record
 * keeps the two sides in lockstep, the producer loading head once a message
 * and so taking the consumers' line from them at every get; resuming with
 * slack lets the next puts run on the head hint (hp) meanwhile. */
#define ROOM_SLACK 4096

static inline uint64_t
room_goal(const RingObject *self, uint64_t rec)
{
    uint64_t slack = ROOM_SLACK < self->size / 4 ? ROOM_SLACK : self->size / 4;
    return rec + slack < self->size ? rec + slack : self->size;
}

static PyObject *
locked_out(RingObject *self, PyObject *exc, const char *what)
{
    (void)self;
    PyErr_Format(exc, "queue: its lock stayed held (a participant is stopped or very slow); %s",
                 what);
    return NULL;
}

static PyObject *
put_impl(RingObject *self, PyObject *item, double t)
{
    if (ring_ready(self)) {
        return NULL;
    }
    if (self->decode != NULL || !PyBytes_CheckExact(item)) {
        PyObject *to = timeout_obj(t);
        PyObject *r = to == NULL ? NULL : call_py(self, S_put_py, item, to, NULL, NULL);
        Py_XDECREF(to);
        return r;
    }
    const char *data = PyBytes_AS_STRING(item);
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(item);
    uint64_t rec = (n + 23) & ~(uint64_t)7;
    double spin = self->spin_now;
    double end = t < 0 ? -1 : shm_monotonic() + t + SLICE;
    int r = ring_put(self, data, n, 1, NULL);
    if (r == Q_GENERAL && n >= CLAIM_MIN) {
        Py_INCREF(item); /* bytes: immutable, kept alive while the GIL is released */
        self->v.inflight++;
        r = put_large(self, data, n, end);
        if (r == Q_FULL && spin_wait(self, 1, rec, &t, spin > LARGE_SPIN ? spin : LARGE_SPIN)) {
            r = put_large(self, data, n, end);
        }
        shm_view_leave(&self->v);
        Py_DECREF(item);
        if (r < 0) {
            return NULL;
        }
        if (r == Q_LOCKED_OUT) {
            return locked_out(self, Full, "the message was not put");
        }
        spin = 0;
    }
    else if (r == Q_FULL) {
        /* wait for some room past ours; if the spin ends short of it, ours may do */
        uint64_t want = room_goal(self, rec);
        if (spin_wait(self, 1, want, &t, spin) || (want > rec && ready(self, 1, rec))) {
            r = ring_put(self, data, n, 1, NULL);
        }
        spin = 0; /* spun already (or the machine is loaded) */
    }
    if (r == Q_OK) {
        Py_RETURN_NONE;
    }
    PyObject *nobj = PyLong_FromUnsignedLongLong(n);
    PyObject *one = PyLong_FromLong(1);
    PyObject *to = timeout_obj(t);
    PyObject *sp = PyFloat_FromDouble(spin);
    PyObject *res = NULL;
    if (nobj != NULL && one != NULL && to != NULL && sp != NULL) {
        PyObject *argv[6] = {(PyObject *)self, item, nobj, one, to, sp};
        res = PyObject_VectorcallMethod(S_put_slow, argv, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                        NULL);
    }
    Py_XDECREF(nobj);
    Py_XDECREF(one);
    Py_XDECREF(to);
    Py_XDECREF(sp);
    return res;
}

static PyObject *
decoded(RingObject *self, PyObject *b)
{
    if (b == NULL || self->decode == NULL) {
        return b;
    }
    PyObject *r = PyObject_CallOneArg(self->decode, b);
    Py_DECREF(b);
    return r;
}

static PyObject *
get_impl(RingObject *self, double t)
{
    if (ring_ready(self)) {
        return NULL;
    }
    int status;
    PyObject *b = get_fast(self, &status);
    if (b != NULL || status < 0) {
        return decoded(self, b);
    }
    double spin = self->spin_now;
    if (status == Q_EMPTY && spin_wait(self, 0, 0, &t, spin)) {
        b = get_fast(self, &status);
        if (b != NULL || status < 0) {
            return decoded(self, b);
        }
    }
    if (status == Q_EMPTY) {
        spin = 0;
    }
    if (status == Q_GENERAL) {
        uint64_t n;
        self->v.inflight++;
        int r = get_large(self, NULL, &b, &n, t < 0 ? -1 : shm_monotonic() + t + SLICE);
        shm_view_leave(&self->v);
        if (r < 0 || r == Q_OK) {
            return decoded(self, b);
        }
    }
    PyObject *to = timeout_obj(t);
    PyObject *sp = PyFloat_FromDouble(spin);
    PyObject *res = to == NULL || sp == NULL ? NULL : call_py(self, S_get_slow, to, sp, NULL, NULL);
    Py_XDECREF(to);
    Py_XDECREF(sp);
    return res;
}

/* put(item, block=True, timeout=None) */
static PyObject *
Q_put(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"item", "block", "timeout"};
    PyObject *a[3];
    double t;
    if (parse_args("put", args, nargs, kwnames, names, 3, 1, a) ||
        block_timeout(a[1], a[2], &t)) {
        return NULL;
    }
    return put_impl(self, a[0], t);
}

static PyObject *
Q_put_nowait(RingObject *self, PyObject *item)
{
    return put_impl(self, item, 0);
}

/* get(block=True, timeout=None) */
static PyObject *
Q_get(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"block", "timeout"};
    PyObject *a[2];
    double t;
    if (parse_args("get", args, nargs, kwnames, names, 2, 0, a) ||
        block_timeout(a[0], a[1], &t)) {
        return NULL;
    }
    return get_impl(self, t);
}

static PyObject *
Q_get_nowait(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    return get_impl(self, 0);
}

/* get_into(buffer, timeout=None) -> size */
static PyObject *
Q_get_into(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"buffer", "timeout"};
    PyObject *a[2];
    double t;
    if (parse_args("get_into", args, nargs, kwnames, names, 2, 1, a) ||
        shm_parse_timeout(a[1], &t) || ring_ready(self)) {
        return NULL;
    }
    Py_buffer dst;
    double spin = self->spin_now;
    if (PyObject_GetBuffer(a[0], &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) == 0) {
        long long n = get_into_fast(self, &dst);
        if (n == -Q_EMPTY && spin_wait(self, 0, 0, &t, spin)) {
            n = get_into_fast(self, &dst);
        }
        if (n == -Q_EMPTY) {
            spin = 0;
        }
        if (n == -Q_GENERAL) {
            uint64_t got;
            PyObject *none = NULL;
            self->v.inflight++;
            int r = get_large(self, &dst, &none, &got, t < 0 ? -1 : shm_monotonic() + t + SLICE);
            shm_view_leave(&self->v);
            n = r == Q_OK ? (long long)got : r < 0 ? -3 : -r;
        }
        PyBuffer_Release(&dst);
        if (n >= 0) {
            return PyLong_FromLongLong(n);
        }
        if (n == -3) {
            return NULL;
        }
    }
    else {
        PyErr_Clear(); /* the general path says precisely what is wrong with it */
    }
    PyObject *to = timeout_obj(t);
    PyObject *sp = PyFloat_FromDouble(spin);
    PyObject *res =
        to == NULL || sp == NULL ? NULL : call_py(self, S_get_into_py, a[0], to, sp, NULL);
    Py_XDECREF(to);
    Py_XDECREF(sp);
    return res;
}

/* get_many(max_items, timeout=None) -> list */
static PyObject *
Q_get_many(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"max_items", "timeout"};
    PyObject *a[2];
    double t;
    if (parse_args("get_many", args, nargs, kwnames, names, 2, 1, a)) {
        return NULL;
    }
    if (PyBool_Check(a[0]) || !PyLong_Check(a[0])) {
        PyErr_Format(PyExc_TypeError, "max_items must be an int, not %.50s",
                     Py_TYPE(a[0])->tp_name);
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(a[0]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (limit < 1) {
        PyErr_Format(PyExc_ValueError, "max_items must be at least 1, not %zd", limit);
        return NULL;
    }
    if (shm_parse_timeout(a[1], &t) || ring_ready(self)) {
        return NULL;
    }
    PyObject *r = Ring_get_many(self, a[0]);
    if (r == NULL) {
        return NULL;
    }
    if (PyTuple_Check(r) && PyTuple_GET_ITEM(r, 1) == Py_False) {
        PyObject *out = Py_NewRef(PyTuple_GET_ITEM(r, 0));
        Py_DECREF(r);
        if (self->decode != NULL) {
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(out); i++) {
                PyObject *d = PyObject_CallOneArg(self->decode, PyList_GET_ITEM(out, i));
                if (d == NULL) {
                    Py_DECREF(out);
                    return NULL;
                }
                PyList_SetItem(out, i, d);
            }
        }
        return out;
    }
    PyObject *to = timeout_obj(t);
    PyObject *res = to == NULL ? NULL : call_py(self, S_get_many_py, a[0], to, r, NULL);
    Py_XDECREF(to);
    Py_DECREF(r);
    return res;
}

/* put_many(items, timeout=None) */
static PyObject *
Q_put_many(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"items", "timeout"};
    PyObject *a[2];
    double t;
    if (parse_args("put_many", args, nargs, kwnames, names, 2, 1, a) ||
        shm_parse_timeout(a[1], &t) || ring_ready(self)) {
        return NULL;
    }
    if (self->decode == NULL && (PyList_CheckExact(a[0]) || PyTuple_CheckExact(a[0]))) {
        PyObject *const *items = PySequence_Fast_ITEMS(a[0]);
        Py_ssize_t k = PySequence_Fast_GET_SIZE(a[0]);
        uint64_t total = 0;
        int plain = k >= 2;
        for (Py_ssize_t j = 0; j < k && plain; j++) {
            plain = PyBytes_CheckExact(items[j]) && (uint64_t)PyBytes_GET_SIZE(items[j]) <= self->cap;
            total += plain ? (uint64_t)PyBytes_GET_SIZE(items[j]) : 0;
        }
        /* the list cannot change meanwhile: no Python code runs in ring_put */
        if (plain && total <= UINT32_MAX &&
            ring_put(self, NULL, 4 + 4 * (uint64_t)k + total, (uint64_t)k, items) == Q_OK) {
            Py_RETURN_NONE;
        }
    }
    PyObject *to = timeout_obj(t);
    PyObject *res = to == NULL ? NULL : call_py(self, S_put_many_py, a[0], to, NULL, NULL);
    Py_XDECREF(to);
    return res;
}

/* _set_identity(word, ticks, pid, slot): who this handle is in claims and
 * reservations, and the attach slot its takes and task_done() are counted in. */
static PyObject *
Q_set_identity(RingObject *self, PyObject *args)
{
    unsigned long long word, ticks;
    long pid;
    int slot;
    if (!PyArg_ParseTuple(args, "KKli", &word, &ticks, &pid, &slot)) {
        return NULL;
    }
    if (slot < 0 || slot >= Q_ACCT_SLOTS) {
        slot = Q_ACCT_SLOTS - 1;
    }
    self->id_word = word;
    self->id_ticks = ticks;
    self->id_pid = pid;
    self->slot = slot;
    self->slot_gen = fork_gen;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- tasks
 *
 * unfinished = puts - finished, finished = retired + sum of done[slot]
 * (queue_ring.py, "Tasks"). Every word of finished only grows, each by one
 * atomic operation, and puts is loaded last: a reader may see fewer finished
 * tasks than there are, never more, so join() never returns early. */

static uint64_t
finished_of(RingObject *self)
{
    uint64_t f = __atomic_load_n((uint64_t *)W(self, Q_RETIRED), __ATOMIC_ACQUIRE);
    for (int s = 0; s < Q_ACCT_SLOTS; s++) {
        f += __atomic_load_n(done_word(self, s), __ATOMIC_ACQUIRE);
    }
    return f;
}

static uint64_t
unfinished_of(RingObject *self)
{
    uint64_t f = finished_of(self);
    /* acquire: pairs with the producers' store of puts (a hint: they hold P) */
    uint64_t p = shm_load64(W(self, Q_PUTS));
    return p > f ? p - f : 0;
}

/* Wake every joiner if one sleeps. Called after a change that may have
 * finished the last task, with a full fence between that change and the
 * load of jwait (pairs with the fence in join_sleep: Dekker). */
static void
wake_joiners(RingObject *self, int check)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n((uint32_t *)W(self, Q_JWAIT), __ATOMIC_RELAXED) == 0) {
        return;
    }
    if (check && unfinished_of(self) != 0) {
        return;
    }
    wake(self, Q_JWAKE, INT_MAX);
}

/* One more task_done() for slot s if it took more than it marked done. */
static int
try_done(RingObject *self, int s)
{
    uint64_t *dw = done_word(self, s);
    uint64_t d = __atomic_load_n(dw, __ATOMIC_RELAXED);
    for (;;) {
        if (d >= __atomic_load_n(taken_word(self, s), __ATOMIC_RELAXED)) {
            return 0;
        }
        if (__atomic_compare_exchange_n(dw, &d, d + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            return 1;
        }
    }
}

static PyObject *
Q_task_done(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self)) {
        return NULL;
    }
    if (unfinished_of(self) == 0) {
        PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
        return NULL;
    }
    /* Credit this handle's own outstanding messages first (what settle()
     * subtracts if it dies), else another slot's, else the queue's: the
     * stdlib lets any thread mark any put item done. */
    int s = acct_slot(self);
    if (!try_done(self, s)) {
        int j = 0;
        while (j < Q_ACCT_SLOTS && (j == s || !try_done(self, j))) {
            j++;
        }
        if (j == Q_ACCT_SLOTS) {
            __atomic_fetch_add((uint64_t *)W(self, Q_RETIRED), 1, __ATOMIC_SEQ_CST);
        }
    }
    wake_joiners(self, 1);
    Py_RETURN_NONE;
}

/* _r_unfinished() -> tasks put and not yet marked done (a snapshot) */
static PyObject *
Q_unfinished(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self)) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(unfinished_of(self));
}

/* _r_join_sleep(seconds) -> True once no task is unfinished. Counts itself
 * in jwait, reads the futex word, checks, then sleeps (GIL released): a
 * task_done() that finishes the last task after our check sees jwait. */
static PyObject *
Q_join_sleep(RingObject *self, PyObject *arg)
{
    double seconds = PyFloat_AsDouble(arg);
    if ((seconds == -1.0 && PyErr_Occurred()) || ring_ready(self)) {
        return NULL;
    }
    uint32_t *jwait = (uint32_t *)W(self, Q_JWAIT);
    uint32_t *jwake = (uint32_t *)W(self, Q_JWAKE);
    __atomic_fetch_add(jwait, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* pairs with the fence in wake_joiners */
    uint32_t v = __atomic_load_n(jwake, __ATOMIC_ACQUIRE);
    int done = unfinished_of(self) == 0;
    if (!done && seconds > 0) {
        self->v.inflight++;
        Py_BEGIN_ALLOW_THREADS
        shm_futex_wait(jwake, v, seconds);
        Py_END_ALLOW_THREADS
        shm_view_leave(&self->v);
        done = unfinished_of(self) == 0;
    }
    __atomic_fetch_sub(jwait, 1, __ATOMIC_RELAXED);
    if (PyErr_CheckSignals() < 0) {
        return NULL;
    }
    return PyBool_FromLong(done);
}

/* _r_settle(slot) -> tasks settled: the slot's consumer died or closed (both
 * locks held): what it took and did not mark done counts as done. One
 * compare-and-swap of its done word up to its taken word finishes them, so a
 * settler killed at any instant leaves them finished or not, never half. */
static PyObject *
Q_settle(RingObject *self, PyObject *arg)
{
    long s = PyLong_AsLong(arg);
    if ((s == -1 && PyErr_Occurred()) || ring_ready(self)) {
        return NULL;
    }
    if (s < 0 || s >= Q_ACCT_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "no such slot");
        return NULL;
    }
    uint64_t *tw = taken_word(self, (int)s), *dw = done_word(self, (int)s);
    /* Never more than is unfinished: a task_done() may already have finished
     * one of these (the stdlib lets one mark a message done before it is taken). */
    uint64_t left = unfinished_of(self);
    uint64_t t = __atomic_load_n(tw, __ATOMIC_RELAXED);
    uint64_t d = __atomic_load_n(dw, __ATOMIC_RELAXED);
    uint64_t owed;
    for (;;) {
        owed = t > d ? t - d : 0;
        owed = owed < left ? owed : left;
        /* seq_cst: as task_done()'s increments (finished_of() sums these words) */
        if (owed == 0 ||
            __atomic_compare_exchange_n(dw, &d, d + owed, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            break;
        }
    }
    if (t > d + owed) {
        /* what could not be credited (already finished otherwise) is forgotten,
         * so the next handle in this slot starts with nothing outstanding */
        __atomic_store_n(tw, d + owed, __ATOMIC_RELAXED);
    }
    if (owed) {
        wr(self, Q_ABANDONED, rd(self, Q_ABANDONED) + owed);
    }
    if (rd(self, Q_I_WHO) == (uint64_t)s + 1) {
        wr(self, Q_I_WHO, 0);
    }
    if (owed) {
        wake_joiners(self, 1);
    }
    return PyLong_FromUnsignedLongLong(owed);
}

/* _r_retire(n): n messages left the queue untaken (discarded, corrupt):
 * their tasks are done (both locks held). */
static PyObject *
Q_retire(RingObject *self, PyObject *arg)
{
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred() || ring_ready(self)) {
        return NULL;
    }
    if (n) {
        __atomic_fetch_add((uint64_t *)W(self, Q_RETIRED), n, __ATOMIC_SEQ_CST);
        wake_joiners(self, 1);
    }
    Py_RETURN_NONE;
}

/* _r_take_intent(gets_after, k) -> taken after; _r_take_taken(taken): the
 * general path's take accounting, in the fast paths' order (both locks held). */
static PyObject *
Q_take_intent(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_r_take_intent(gets_after, k)");
        return NULL;
    }
    unsigned long long g = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long k = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred() || ring_ready(self)) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(take_intent(self, g, k));
}

static PyObject *
Q_take_taken(RingObject *self, PyObject *arg)
{
    unsigned long long nt = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred() || ring_ready(self)) {
        return NULL;
    }
    take_taken(self, nt);
    Py_RETURN_NONE;
}

/* _r_repair_intent(): a consumer died (or was interrupted) between a take's
 * commit and its taken store: finish that store if the take committed (both
 * locks held, after the counters were repaired). */
static PyObject *
Q_repair_intent(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ring_ready(self)) {
        return NULL;
    }
    uint64_t who = rd(self, Q_I_WHO);
    if (who >= 1 && who <= Q_ACCT_SLOTS && rd(self, Q_GETS) >= rd(self, Q_I_GETS)) {
        uint64_t *tw = taken_word(self, (int)who - 1);
        uint64_t nt = rd(self, Q_I_NEW);
        if (__atomic_load_n(tw, __ATOMIC_RELAXED) < nt) {
            __atomic_store_n(tw, nt, __ATOMIC_RELAXED);
        }
    }
    wr(self, Q_I_WHO, 0);
    Py_RETURN_NONE;
}

/* _r_outstanding(slot) -> messages the slot took and did not mark done */
static PyObject *
Q_outstanding(RingObject *self, PyObject *arg)
{
    long s = PyLong_AsLong(arg);
    if ((s == -1 && PyErr_Occurred()) || ring_ready(self)) {
        return NULL;
    }
    if (s < 0 || s >= Q_ACCT_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "no such slot");
        return NULL;
    }
    uint64_t d = __atomic_load_n(done_word(self, (int)s), __ATOMIC_ACQUIRE);
    uint64_t t = __atomic_load_n(taken_word(self, (int)s), __ATOMIC_ACQUIRE);
    return PyLong_FromUnsignedLongLong(t > d ? t - d : 0);
}

/* _set_decode(decode | None): the codec's decode (None: raw bytes). */
static PyObject *
Q_set_decode(RingObject *self, PyObject *arg)
{
    Py_XSETREF(self->decode, arg == Py_None ? NULL : Py_NewRef(arg));
    Py_RETURN_NONE;
}

/* _pending() -> (reservation pos | None, claim pos | None) left marked */
static PyObject *
Q_pending(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(NN)",
                         (self->pend & PEND_RES) ? PyLong_FromUnsignedLongLong(self->pend_res_pos)
                                                 : Py_NewRef(Py_None),
                         (self->pend & PEND_CLAIM)
                             ? PyLong_FromUnsignedLongLong(self->pend_claim_pos)
                             : Py_NewRef(Py_None));
}

static PyMethodDef QueueCore_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Q_put, METH_FASTCALL | METH_KEYWORDS,
     "put(item, block=True, timeout=None): append one message, waiting up to timeout "
     "seconds for room (block=False: not at all).\n\nRaises Full, Closed, MessageTooLarge, "
     "TypeError (see shmkit.Queue)."},
    {"put_nowait", (PyCFunction)Q_put_nowait, METH_O,
     "put_nowait(item): put(item, block=False): raise Full at once if there is no room."},
    {"get", (PyCFunction)(void (*)(void))Q_get, METH_FASTCALL | METH_KEYWORDS,
     "get(block=True, timeout=None): remove and return the oldest message, waiting up to "
     "timeout seconds (block=False: not at all).\n\nRaises Empty, Closed, LayoutError."},
    {"get_nowait", (PyCFunction)Q_get_nowait, METH_NOARGS,
     "get_nowait(): get(block=False): raise Empty at once if nothing is queued."},
    {"get_into", (PyCFunction)(void (*)(void))Q_get_into, METH_FASTCALL | METH_KEYWORDS,
     "get_into(buffer, timeout=None) -> int: copy the oldest message into a writable "
     "C-contiguous buffer and return its size (one copy, no allocation; the codec is "
     "bypassed).\n\nRaises BufferTooSmall (the message stays queued), TypeError, Empty, "
     "Closed."},
    {"get_many", (PyCFunction)(void (*)(void))Q_get_many, METH_FASTCALL | METH_KEYWORDS,
     "get_many(max_items, timeout=None) -> list: up to max_items messages under one lock "
     "acquisition; waits (up to timeout) only for the first.\n\nRaises Empty, Closed."},
    {"put_many", (PyCFunction)(void (*)(void))Q_put_many, METH_FASTCALL | METH_KEYWORDS,
     "put_many(items, timeout=None): append several messages as one batch record: all of "
     "them, contiguous and in order, or none.\n\nRaises Full (nothing was put), "
     "MessageTooLarge, Closed, TypeError."},
    {"_set_identity", (PyCFunction)Q_set_identity, METH_VARARGS,
     "_set_identity(word, ticks, pid)"},
    {"_set_decode", (PyCFunction)Q_set_decode, METH_O, "_set_decode(decode | None)"},
    {"task_done", (PyCFunction)Q_task_done, METH_NOARGS,
     "task_done(): mark one message taken from the queue as processed (like "
     "queue.Queue.task_done), in any process.\n\nRaises ValueError if called more times "
     "than messages were put, Closed."},
    {"_r_unfinished", (PyCFunction)Q_unfinished, METH_NOARGS, "_r_unfinished() -> int"},
    {"_r_join_sleep", (PyCFunction)Q_join_sleep, METH_O,
     "_r_join_sleep(seconds) -> True once no task is unfinished"},
    {"_r_settle", (PyCFunction)Q_settle, METH_O, "_r_settle(slot) -> tasks settled"},
    {"_r_retire", (PyCFunction)Q_retire, METH_O, "_r_retire(n): n messages left untaken"},
    {"_r_take_intent", (PyCFunction)(void (*)(void))Q_take_intent, METH_FASTCALL,
     "_r_take_intent(gets_after, k) -> taken after"},
    {"_r_take_taken", (PyCFunction)Q_take_taken, METH_O, "_r_take_taken(taken)"},
    {"_r_repair_intent", (PyCFunction)Q_repair_intent, METH_NOARGS, "_r_repair_intent()"},
    {"_r_outstanding", (PyCFunction)Q_outstanding, METH_O, "_r_outstanding(slot) -> int"},
    {"_r_pending", (PyCFunction)Q_pending, METH_NOARGS,
     "_r_pending() -> (reservation, claim) positions this handle left marked"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef QueueCore_members[] = {
    {"_spin", T_DOUBLE, offsetof(RingObject, spin), 0, "base spin budget (seconds)"},
    {"_spin_now", T_DOUBLE, offsetof(RingObject, spin_now), 0, "adaptive spin budget"},
    {"_calm_until", T_DOUBLE, offsetof(RingObject, calm_until), 0,
     "no spinning before this monotonic time"},
    {NULL, 0, 0, 0, NULL},
};

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
    self->hp = 0;
    self->slot = Q_ACCT_SLOTS - 1;
    self->slot_gen = fork_gen;
    return 0;
}

static void
Ring_dealloc(RingObject *self)
{
    self->v.inflight = 0;
    shm_view_close(&self->v);
    Py_XDECREF(self->cmutex);
    Py_XDECREF(self->pmutex);
    Py_XDECREF(self->decode);
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
    {"_r_put", (PyCFunction)(void (*)(void))Ring_put, METH_FASTCALL,
     "put(data, count) -> 0 published | 1 full | 2 general path"},
    {"_r_get", (PyCFunction)Ring_get, METH_NOARGS, "get() -> bytes | 1 empty | 2 general path"},
    {"_r_get_into", (PyCFunction)Ring_get_into, METH_O,
     "get_into(buffer) -> size | -1 empty | -2 general path"},
    {"_r_get_many", (PyCFunction)Ring_get_many, METH_O,
     "get_many(limit) -> (list, more) | 1 empty | 2 general path"},
    {"_r_poll", (PyCFunction)(void (*)(void))Ring_poll, METH_FASTCALL,
     "poll(putter, need, seconds) -> 1 ready | 0 not yet | -1 preempted"},
    {"_r_wake_value", (PyCFunction)Ring_wake_value, METH_O, "wake_value(putter) -> futex word"},
    {"_r_wake", (PyCFunction)(void (*)(void))Ring_wake, METH_FASTCALL, "wake(putter, n)"},
    {"_r_sleep", (PyCFunction)(void (*)(void))Ring_sleep, METH_FASTCALL,
     "sleep(putter, expected, seconds) -> False on timeout"},
    {"_r_lock", (PyCFunction)(void (*)(void))Ring_lock, METH_FASTCALL,
     "lock(producer, timeout) -> OK | OWNER_DIED | BUSY"},
    {"_r_unlock", (PyCFunction)Ring_unlock, METH_O, "unlock(bad): release C then P if held"},
    {"_r_close", (PyCFunction)Ring_close, METH_NOARGS, "release the mapping"},
    {"_r_leave", (PyCFunction)Ring_leave, METH_VARARGS,
     "_r_leave(reservation, pos, who): drop it at this handle's next locked call"},
    {"_r_copy_in", (PyCFunction)(void (*)(void))Ring_copy_in, METH_FASTCALL,
     "_copy_in(index, data): copy a reserved record's payload in (GIL released)"},
    {"_r_copy_out", (PyCFunction)(void (*)(void))Ring_copy_out, METH_FASTCALL,
     "_copy_out(index, n, buffer | None) -> bytes | n: a claimed payload, out"},
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
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
};

/* The base of shmkit.Queue: its public put/get family, each one C call. */
static PyTypeObject QueueCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkit._core._queue.QueueCore",
    .tp_doc = "The C base of shmkit.Queue: put/get/put_nowait/get_nowait/get_into/get_many/"
              "put_many in C, falling back to the subclass's general path.",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_base = &RingType,
    .tp_methods = QueueCore_methods,
    .tp_members = QueueCore_members,
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
    if (pthread_atfork(NULL, NULL, queue_after_fork_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    if (PyType_Ready(&RingType) < 0 || PyType_Ready(&QueueCoreType) < 0) {
        return NULL;
    }
    PyObject *errors = PyImport_ImportModule("shmkit.errors");
    if (errors == NULL) {
        return NULL;
    }
    Full = PyObject_GetAttrString(errors, "Full");
    Empty = PyObject_GetAttrString(errors, "Empty");
    Py_DECREF(errors);
    if (Full == NULL || Empty == NULL) {
        return NULL;
    }
    S_put_py = PyUnicode_InternFromString("_put_py");
    S_put_slow = PyUnicode_InternFromString("_put_slow");
    S_get_slow = PyUnicode_InternFromString("_get_slow");
    S_get_into_py = PyUnicode_InternFromString("_get_into_py");
    S_get_many_py = PyUnicode_InternFromString("_get_many_py");
    S_put_many_py = PyUnicode_InternFromString("_put_many_py");
    if (!S_put_py || !S_put_slow || !S_get_slow || !S_get_into_py || !S_get_many_py ||
        !S_put_many_py) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&queue_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0 ||
        PyModule_AddObjectRef(m, "QueueCore", (PyObject *)&QueueCoreType) < 0 ||
        PyModule_AddIntConstant(m, "LOCKED_OUT", Q_LOCKED_OUT) < 0 ||
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
