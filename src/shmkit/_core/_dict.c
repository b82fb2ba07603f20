/* shmkit._core._dict — SharedDict's hash table: get / set / delete as single C calls.
 *
 * The format and its ordering rule are drawn in shmkit/_shm/dict_table.py;
 * the offsets below are the same. In short: open addressing with linear
 * probing over an index of u64 slot words (two indexes; `epoch & 1` names the
 * active one), entries in 64-byte-unit blocks of a heap with size-class free
 * lists. A writer holds the robust mutex for the whole of one C call, builds
 * the new block off to the side and publishes it with one release store of
 * the slot word; readers take no lock and validate their copy with the
 * block's seq, the slot word and the epoch (a seqlock per entry).
 *
 * Crash safety by ordering: a writer killed at any instant leaves every slot
 * holding its old or its new block. `dirty` (and EOWNERDEAD) tell the next
 * writer, which rebuilds the allocator and the counters from the active
 * index (dk_rebuild), so leaked blocks come back.
 *
 * Shared memory is hostile: every slot word, block offset, unit count and
 * length is bounded before use; a bad one makes a reader retry (and a
 * writer's repair drop the entry), and nothing is read or written outside
 * the mapping.
 */
#include "shm.h"

#include <stdarg.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shmkit's layouts are little-endian"
#endif

static shm_errors E;

static int
dk_as_int(PyObject *o)
{
    long x = PyLong_AsLong(o);
    if (x > INT_MAX || x < INT_MIN) {
        PyErr_SetString(PyExc_OverflowError, "int out of range");
        return -1;
    }
    return (int)x;
}
static PyObject *Full;
static PyObject *MessageTooLarge;
static PyObject *BusySentinel;
static PyObject *MovedSentinel;
static PyObject *NeedGrowth;

/* Control words (offsets from the body). */
#define D_WRITES 64
#define D_EPOCH 72
#define D_COUNT 80
#define D_TOMBS 88
#define D_USED 96
#define D_BUMP 104
#define D_DIRTY 112
#define D_DEATHS 120
#define D_WAITERS 128
#define D_STAMP 136
#define D_COMPACTIONS 144
#define D_DROPPED 152
#define D_GEN 192 /* root only: the current generation (its own cache line) */
#define D_FREE 256
#define D_CLASSES 96

/* Blocks. */
#define B_SEQ 0
#define B_HASH 8
#define B_KLEN 16
#define B_VLEN 20
#define B_UNITS 24
#define B_HEAD 32
#define UNIT 64
#define KSTR 0x80000000u

#define S_EMPTY 0
#define S_TOMB 1

/* Ops of _c_write. */
#define OP_SET 0
#define OP_POP 1
#define OP_SETDEFAULT 2
#define OP_CAS 3
#define OP_CLEAR 4
#define OP_POPITEM 5
#define OP_REPAIR 6
#define OP_COMPACT 7
#define OP_UPDATE 8 /* key: a list of keys, data: a list of values */

/* Reads retried in C before handing back to Python. */
#define D_TRIES 256
/* Stamps stay below this; above is a corrupt word. */
#define D_MAX_STAMP ((uint64_t)1 << 61)

typedef struct {
    PyObject_HEAD
    shm_view v;
    int attached;
    int readonly;
    int flock;
    int grow; /* a full table raises NeedGrowth (the caller grows), not Full */
    shm_view r; /* the root segment: writer mutex, writes, waiters, generation word */
    Py_ssize_t rbody;
    uint64_t gen; /* generation of the table `v` maps */
    Py_ssize_t body;
    uint64_t capacity, nslots, mask, heap_size, heap_units, max_key, seed;
    uint64_t idx_off[2], heap_off;
    uint64_t retries;
    PyObject *name;
    PyObject *encode; /* NULL: raw bytes values */
    PyObject *decode;
} DictObject;

#define AT(self, off) ((self)->v.base + (self)->body + (off))
#define RT(self, off) ((self)->r.base + (self)->rbody + (off))
#define HEAP(self, off) (AT(self, (self)->heap_off) + (off))

/* ------------------------------------------------------------------ hash */

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t
rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* The key hash: XXH64's short-input rounds over every byte, seeded per dict
 * and by the key's type (str or bytes). Stable across processes and runs. */
static uint64_t
dk_hash(const char *p, size_t n, uint32_t kflag, uint64_t seed)
{
    uint64_t h = seed + P5 + (uint64_t)n + (kflag ? P3 : 0);
    while (n >= 8) {
        uint64_t k;
        memcpy(&k, p, 8);
        k *= P2;
        k = rotl64(k, 31);
        k *= P1;
        h ^= k;
        h = rotl64(h, 27) * P1 + P4;
        p += 8;
        n -= 8;
    }
    if (n >= 4) {
        uint32_t k;
        memcpy(&k, p, 4);
        h ^= (uint64_t)k * P1;
        h = rotl64(h, 23) * P2 + P3;
        p += 4;
        n -= 4;
    }
    while (n) {
        h ^= (uint64_t)(unsigned char)*p * P5;
        h = rotl64(h, 11) * P1;
        p++;
        n--;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

/* ------------------------------------------------------------------ keys */

typedef struct {
    const char *p;
    Py_ssize_t n;
    uint32_t flag; /* KSTR for str keys */
    uint64_t h;
} dkey;

static int
dk_key(DictObject *self, PyObject *key, dkey *k)
{
    if (PyUnicode_CheckExact(key) || PyUnicode_Check(key)) {
        k->p = PyUnicode_AsUTF8AndSize(key, &k->n);
        if (k->p == NULL) {
            return -1;
        }
        k->flag = KSTR;
    }
    else if (PyBytes_Check(key)) {
        k->p = PyBytes_AS_STRING(key);
        k->n = PyBytes_GET_SIZE(key);
        k->flag = 0;
    }
    else {
        PyErr_Format(PyExc_TypeError, "SharedDict keys are str or bytes, not %.50s",
                     Py_TYPE(key)->tp_name);
        return -1;
    }
    if ((uint64_t)k->n > self->max_key) {
        PyErr_Format(MessageTooLarge, "dict %R: a key of %zd bytes is longer than max_key=%llu",
                     self->name, k->n, (unsigned long long)self->max_key);
        return -1;
    }
    k->h = dk_hash(k->p, (size_t)k->n, k->flag, self->seed);
    return 0;
}

static PyObject *
dk_key_object(const char *p, uint32_t klen)
{
    if (klen & KSTR) {
        return PyUnicode_DecodeUTF8(p, (Py_ssize_t)(klen & ~KSTR), "strict");
    }
    return PyBytes_FromStringAndSize(p, (Py_ssize_t)klen);
}

/* ------------------------------------------------------------------ blocks */

static inline uint64_t *
dk_index(DictObject *self, uint64_t epoch)
{
    return (uint64_t *)AT(self, self->idx_off[epoch & 1]);
}

/* Heap offset of the block a live slot word names, or UINT64_MAX if the
 * word cannot be a live block (corrupt). */
static inline uint64_t
dk_block_of(DictObject *self, uint64_t w)
{
    uint64_t b = (w & 0xffffffffu);
    if (b < 2 || b - 2 >= self->heap_units) {
        return UINT64_MAX;
    }
    return (b - 2) * UNIT;
}

static inline uint64_t
dk_word(uint64_t h, uint64_t off)
{
    return (h & 0xffffffff00000000ULL) | (off / UNIT + 2);
}

/* Check a block's header fields against the heap (values already loaded).
 * 0 when the block is whole and fits; -1 otherwise. */
static inline int
dk_block_fits(DictObject *self, uint64_t off, uint32_t klen, uint32_t vlen, uint32_t units)
{
    uint64_t kn = klen & ~KSTR;
    if (units == 0 || (uint64_t)units > self->heap_units - off / UNIT || kn > self->max_key) {
        return -1;
    }
    if ((uint64_t)B_HEAD + kn + (uint64_t)vlen > (uint64_t)units * UNIT) {
        return -1;
    }
    return 0;
}

static inline uint32_t
ld32(const char *p)
{
    return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ readers */

#define RD_HIT 0
#define RD_MISS 1
#define RD_RETRY 2
#define RD_MOVED 3 /* the table was replaced by a newer generation: remap */
#define RD_ERROR (-1)

/* Is `v` still the current generation? acquire: pairs with the release store
 * of the generation word in Dict_grow() (the new table is whole before it). */
static inline int
dk_moved(DictObject *self)
{
    return shm_load64(RT(self, D_GEN)) != self->gen;
}

/* One lock-free lookup. On RD_HIT *val is a new bytes object (when want_val)
 * and *ver the entry's version (its block seq). */
static int
dk_read_once(DictObject *self, const dkey *k, int want_val, PyObject **val, uint64_t *ver)
{
    if (dk_moved(self)) {
        return RD_MOVED;
    }
    /* acquire: pairs with the release store of epoch in dk_flip() */
    uint64_t e1 = shm_load64(AT(self, D_EPOCH));
    uint64_t *idx = dk_index(self, e1);
    uint64_t i = k->h & self->mask;
    uint32_t want_klen = (uint32_t)k->n | k->flag;
    for (uint64_t probes = 0; probes < self->nslots; probes++, i = (i + 1) & self->mask) {
        /* acquire: pairs with the release store that published the slot */
        uint64_t w = shm_load64(&idx[i]);
        if (w == S_EMPTY) {
            break;
        }
        if (w == S_TOMB || (w >> 32) != (k->h >> 32)) {
            continue;
        }
        uint64_t off = dk_block_of(self, w);
        if (off == UINT64_MAX) {
            return RD_RETRY; /* a torn or corrupt word: re-check from the epoch */
        }
        char *b = HEAP(self, off);
        /* acquire: pairs with the release store of the even seq in dk_seal() */
        uint64_t s1 = shm_load64(b + B_SEQ);
        if (s1 & 1) {
            return RD_RETRY;
        }
        uint32_t klen = ld32(b + B_KLEN), vlen = ld32(b + B_VLEN), units = ld32(b + B_UNITS);
        uint64_t hh = shm_relaxed64(b + B_HASH);
        if (dk_block_fits(self, off, klen, vlen, units)) {
            return RD_RETRY;
        }
        int match = hh == k->h && klen == want_klen && memcmp(b + B_HEAD, k->p, (size_t)k->n) == 0;
        PyObject *out = NULL;
        if (match && want_val) {
            out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)vlen);
            if (out == NULL) {
                return RD_ERROR;
            }
            memcpy(PyBytes_AS_STRING(out), b + B_HEAD + (klen & ~KSTR), vlen);
            shm_crash("dict.get.copied");
        }
        /* acquire fence: the copy above happens before the re-loads below;
         * pairs with the release fence every block modification starts with */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (shm_relaxed64(b + B_SEQ) != s1 || shm_relaxed64(&idx[i]) != w ||
            shm_relaxed64(AT(self, D_EPOCH)) != e1) {
            Py_XDECREF(out);
            return RD_RETRY;
        }
        if (match) {
            *val = out;
            *ver = s1;
            return RD_HIT;
        }
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (shm_relaxed64(AT(self, D_EPOCH)) != e1) {
        return RD_RETRY;
    }
    return RD_MISS;
}

static int
dk_ready(DictObject *self)
{
    if (!self->attached || self->v.closed || self->v.base == NULL || self->r.closed ||
        self->r.base == NULL) {
        PyErr_SetString(E.closed, "dict handle is closed");
        return -1;
    }
    return 0;
}

/* Lookup with up to `tries` retries: RD_HIT, RD_MISS, RD_RETRY (gave up) or RD_ERROR. */
static int
dk_read(DictObject *self, const dkey *k, int want_val, int tries, PyObject **val, uint64_t *ver)
{
    for (int t = 0; t < tries; t++) {
        int rc = dk_read_once(self, k, want_val, val, ver);
        if (rc != RD_RETRY) {
            return rc;
        }
        self->retries++;
        for (int p = 0; p < 8 * (t + 1) && p < 256; p++) {
            SHM_PAUSE();
        }
    }
    return RD_RETRY;
}

/* Map the current generation (Python: SharedDict._remap). 0, or -1 with an
 * exception set (the handle may have been closed meanwhile). */
static int
dk_follow(DictObject *self)
{
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_remap", NULL);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return dk_ready(self);
}

/* dk_read, following the table into newer generations. */
static int
dk_read_follow(DictObject *self, const dkey *k, int want_val, int tries, PyObject **val,
               uint64_t *ver)
{
    for (int hops = 0;; hops++) {
        int rc = dk_read(self, k, want_val, tries, val, ver);
        if (rc != RD_MOVED) {
            return rc;
        }
        if (hops > 64) {
            return RD_RETRY; /* the slow path keeps trying, bounded by time */
        }
        if (dk_follow(self)) {
            return RD_ERROR;
        }
    }
}

static PyObject *
dk_decode(DictObject *self, PyObject *raw)
{
    if (self->decode == NULL) {
        return raw;
    }
    PyObject *out = PyObject_CallOneArg(self->decode, raw);
    Py_DECREF(raw);
    return out;
}

/* ------------------------------------------------------------------ allocator (writer only) */

static inline int
dk_class(uint64_t units)
{
    if (units <= 64) {
        return (int)units - 1;
    }
    int lg = 63 - __builtin_clzll(units);
    int c = 64 + lg - 6;
    return c < D_CLASSES ? c : D_CLASSES - 1;
}

static inline uint64_t *
dk_head(DictObject *self, int c)
{
    return (uint64_t *)AT(self, D_FREE + 8 * c);
}

/* Mark a block not whole and link it on its class's free list. The odd seq
 * and the release fence come first: a reader whose copy saw any store after
 * them fails its re-check (pairs with the acquire fence in dk_read_once). */
static void
dk_push_free(DictObject *self, uint64_t off, uint64_t units)
{
    char *b = HEAP(self, off);
    shm_set_relaxed64(b + B_SEQ, shm_relaxed64(b + B_SEQ) | 1);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    int c = dk_class(units);
    uint64_t *head = dk_head(self, c);
    shm_set_relaxed64(b + B_HASH, shm_relaxed64(head));
    *(uint32_t *)(b + B_UNITS) = (uint32_t)units;
    shm_crash("dict.free.linked");
    shm_set_relaxed64(head, off + 1);
}

/* Pop the head of class c if it holds at least `units`; UINT64_MAX if not,
 * or -2 (as UINT64_MAX - 1) when the list is corrupt. *got = its units. */
#define NO_BLOCK UINT64_MAX
#define BAD_LIST (UINT64_MAX - 1)

static uint64_t
dk_pop_free(DictObject *self, int c, uint64_t units, uint64_t *got)
{
    uint64_t *head = dk_head(self, c);
    uint64_t h = shm_relaxed64(head);
    if (h == 0) {
        return NO_BLOCK;
    }
    uint64_t off = h - 1;
    if (off % UNIT || off >= shm_relaxed64(AT(self, D_BUMP)) || off >= self->heap_size) {
        return BAD_LIST;
    }
    char *b = HEAP(self, off);
    uint64_t u = ld32(b + B_UNITS);
    uint64_t next = shm_relaxed64(b + B_HASH);
    if (u == 0 || u > self->heap_units - off / UNIT || dk_class(u) != c ||
        !(shm_relaxed64(b + B_SEQ) & 1) || (next && ((next - 1) % UNIT || next - 1 >= self->heap_size))) {
        return BAD_LIST;
    }
    if (u < units) {
        return NO_BLOCK;
    }
    shm_set_relaxed64(head, next);
    *got = u;
    return off;
}

/* Allocate `units` of heap: its offset, NO_BLOCK when nothing fits, BAD_LIST
 * when a free list is corrupt (the caller rebuilds and retries). */
static uint64_t
dk_alloc(DictObject *self, uint64_t units)
{
    uint64_t got = 0, off;
    int c = dk_class(units);
    off = dk_pop_free(self, c, units, &got);
    if (off == NO_BLOCK) {
        char *bump = AT(self, D_BUMP);
        uint64_t top = shm_relaxed64(bump);
        if (top <= self->heap_size && units <= (self->heap_size - top) / UNIT) {
            shm_set_relaxed64(bump, top + units * UNIT);
            /* a fresh block's seq starts odd, as a freed one's */
            shm_set_relaxed64(HEAP(self, top) + B_SEQ, 1);
            return top;
        }
        for (int d = c + 1; d < D_CLASSES && off == NO_BLOCK; d++) {
            off = dk_pop_free(self, d, units, &got);
        }
    }
    if (off == NO_BLOCK || off == BAD_LIST) {
        return off;
    }
    if (got > units) {
        shm_crash("dict.alloc.split");
        uint64_t rest = off + units * UNIT;
        /* The remainder lies inside a free block (odd seq, fenced when freed). */
        shm_set_relaxed64(HEAP(self, rest) + B_SEQ, 1);
        dk_push_free(self, rest, got - units);
    }
    return off;
}

/* ------------------------------------------------------------------ rebuild (repair) */

typedef struct {
    uint64_t off;
    uint64_t units;
    uint64_t slot;
} extent;

static int
extent_cmp(const void *a, const void *b)
{
    uint64_t x = ((const extent *)a)->off, y = ((const extent *)b)->off;
    return (x > y) - (x < y);
}

/* Validate the block a live slot word names (writer side: stable memory).
 * Returns its offset and units, or -1 if corrupt. */
static int
dk_check_live(DictObject *self, uint64_t w, uint64_t *off, uint64_t *units)
{
    uint64_t o = dk_block_of(self, w);
    if (o == UINT64_MAX) {
        return -1;
    }
    char *b = HEAP(self, o);
    uint32_t klen = ld32(b + B_KLEN), vlen = ld32(b + B_VLEN), u = ld32(b + B_UNITS);
    if ((shm_relaxed64(b + B_SEQ) & 1) || dk_block_fits(self, o, klen, vlen, u) ||
        (shm_relaxed64(b + B_HASH) >> 32) != (w >> 32)) {
        return -1;
    }
    *off = o;
    *units = u;
    return 0;
}

/* Add the free range [a, b) of the heap to the free lists (one block). */
static void
dk_free_range(DictObject *self, uint64_t a, uint64_t b)
{
    while (b > a) {
        uint64_t units = (b - a) / UNIT;
        if (units > 0xffffffffu) {
            units = 0x80000000u;
        }
        dk_push_free(self, a, units);
        a += units * UNIT;
    }
}

/* Rebuild the allocator and counters from the active index: the repair after
 * a writer died, and the coalescing pass before Full. Drops (tombstones) live
 * slots whose block is corrupt or overlaps another. Idempotent: a writer
 * killed inside leaves `dirty` set and the next one runs it again. */
static int
dk_rebuild(DictObject *self)
{
    uint64_t epoch = shm_relaxed64(AT(self, D_EPOCH));
    uint64_t *idx = dk_index(self, epoch);
    extent *ex = PyMem_RawMalloc(sizeof(extent) * (size_t)(self->capacity + 1));
    if (ex == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    uint64_t n = 0, tombs = 0, dropped = 0;
    for (uint64_t i = 0; i < self->nslots; i++) {
        uint64_t w = shm_relaxed64(&idx[i]);
        if (w == S_EMPTY) {
            continue;
        }
        if (w == S_TOMB) {
            tombs++;
            continue;
        }
        uint64_t off, units;
        if (n >= self->capacity || dk_check_live(self, w, &off, &units)) {
            shm_store64(&idx[i], S_TOMB);
            tombs++;
            dropped++;
            continue;
        }
        ex[n].off = off;
        ex[n].units = units;
        ex[n].slot = i;
        n++;
    }
    qsort(ex, (size_t)n, sizeof(extent), extent_cmp);
    /* Release fence: the tombstones above, and every slot change before this
     * writer took the lock, precede the free-block headers written below. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    for (int c = 0; c < D_CLASSES; c++) {
        shm_set_relaxed64(dk_head(self, c), 0);
    }
    uint64_t cur = 0, used = 0, live = 0;
    for (uint64_t j = 0; j < n; j++) {
        if (ex[j].off < cur) { /* overlaps the previous block: corrupt */
            shm_store64(&idx[ex[j].slot], S_TOMB);
            tombs++;
            dropped++;
            continue;
        }
        /* bump covers everything below cur while free ranges are pushed */
        shm_set_relaxed64(AT(self, D_BUMP), ex[j].off);
        dk_free_range(self, cur, ex[j].off);
        shm_crash("dict.repair.mid");
        cur = ex[j].off + ex[j].units * UNIT;
        used += ex[j].units * UNIT;
        live++;
    }
    PyMem_RawFree(ex);
    shm_set_relaxed64(AT(self, D_BUMP), cur);
    shm_set_relaxed64(AT(self, D_COUNT), live);
    shm_set_relaxed64(AT(self, D_TOMBS), tombs);
    shm_set_relaxed64(AT(self, D_USED), used);
    if (dropped) {
        char *d = AT(self, D_DROPPED);
        shm_set_relaxed64(d, shm_relaxed64(d) + dropped);
    }
    return 0;
}

/* ------------------------------------------------------------------ index (writer only) */

/* Find `k` in the active index. Returns its slot or -1; *ins is the first
 * tombstone or empty slot of the probe (-1 if the probe met neither). */
static int64_t
dk_find(DictObject *self, uint64_t *idx, const dkey *k, int64_t *ins, uint64_t *boff)
{
    uint64_t i = k->h & self->mask;
    uint32_t want_klen = (uint32_t)k->n | k->flag;
    *ins = -1;
    for (uint64_t probes = 0; probes < self->nslots; probes++, i = (i + 1) & self->mask) {
        uint64_t w = shm_relaxed64(&idx[i]);
        if (w == S_EMPTY) {
            if (*ins < 0) {
                *ins = (int64_t)i;
            }
            return -1;
        }
        if (w == S_TOMB) {
            if (*ins < 0) {
                *ins = (int64_t)i;
            }
            continue;
        }
        if ((w >> 32) != (k->h >> 32)) {
            continue;
        }
        uint64_t off, units;
        if (dk_check_live(self, w, &off, &units)) {
            continue; /* corrupt: never matched; the next repair drops it */
        }
        char *b = HEAP(self, off);
        if (shm_relaxed64(b + B_HASH) == k->h && ld32(b + B_KLEN) == want_klen &&
            memcmp(b + B_HEAD, k->p, (size_t)k->n) == 0) {
            *boff = off;
            return (int64_t)i;
        }
    }
    return -1;
}

/* Release: every store of the rebuilt index precedes the epoch readers load
 * (pairs with the acquire load of epoch in dk_read_once). */
static void
dk_flip(DictObject *self, uint64_t epoch)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    shm_store64(AT(self, D_EPOCH), epoch + 1);
}

/* Rebuild the index without tombstones in the inactive copy, then flip to it.
 * Killed before the flip, readers and writers keep the old index. */
static void
dk_compact(DictObject *self)
{
    uint64_t epoch = shm_relaxed64(AT(self, D_EPOCH));
    uint64_t *from = dk_index(self, epoch), *to = dk_index(self, epoch + 1);
    /* Nobody validated against the inactive copy after the last flip: a
     * reader still in it sees the epoch change and retries. */
    memset(to, 0, (size_t)(8 * self->nslots));
    for (uint64_t i = 0; i < self->nslots; i++) {
        uint64_t w = shm_relaxed64(&from[i]), off, units;
        if (w == S_EMPTY || w == S_TOMB || dk_check_live(self, w, &off, &units)) {
            continue;
        }
        uint64_t j = shm_relaxed64(HEAP(self, off) + B_HASH) & self->mask;
        while (to[j] != S_EMPTY) {
            j = (j + 1) & self->mask;
        }
        to[j] = w;
    }
    shm_crash("dict.compact.built");
    dk_flip(self, epoch);
    shm_set_relaxed64(AT(self, D_TOMBS), 0);
    char *c = AT(self, D_COMPACTIONS);
    shm_set_relaxed64(c, shm_relaxed64(c) + 1);
}

/* Write key and value into a new block and seal it; returns its seq. */
static uint64_t
dk_fill(DictObject *self, uint64_t off, uint64_t units, const dkey *k, const char *val,
        uint64_t vlen)
{
    char *b = HEAP(self, off);
    char *st = AT(self, D_STAMP);
    uint64_t s = (shm_relaxed64(st) % D_MAX_STAMP) + 1;
    shm_set_relaxed64(st, s);
    /* odd seq, then a release fence: pairs with the reader's acquire fence */
    shm_set_relaxed64(b + B_SEQ, 2 * s + 1);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    shm_set_relaxed64(b + B_HASH, k->h);
    *(uint32_t *)(b + B_KLEN) = (uint32_t)k->n | k->flag;
    *(uint32_t *)(b + B_VLEN) = (uint32_t)vlen;
    *(uint32_t *)(b + B_UNITS) = (uint32_t)units;
    memcpy(b + B_HEAD, k->p, (size_t)k->n);
    shm_crash("dict.set.filling");
    shm_copy(b + B_HEAD + k->n, val, (size_t)vlen);
    /* release: pairs with the acquire load of seq in dk_read_once() */
    shm_store64(b + B_SEQ, 2 * s + 2);
    return 2 * s + 2;
}

static inline void
dk_add(DictObject *self, int off, int64_t delta)
{
    char *p = AT(self, off);
    shm_set_relaxed64(p, shm_relaxed64(p) + (uint64_t)delta);
}

/* Tombstone slot i (or empty it, with the tombstones before it, when the
 * next slot is empty: no probe passes through them then). */
static void
dk_unlink_slot(DictObject *self, uint64_t *idx, uint64_t i)
{
    uint64_t next = (i + 1) & self->mask;
    if (shm_relaxed64(&idx[next]) != S_EMPTY) {
        shm_store64(&idx[i], S_TOMB);
        dk_add(self, D_TOMBS, 1);
        return;
    }
    shm_store64(&idx[i], S_EMPTY);
    uint64_t j = (i - 1) & self->mask;
    while (j != i && shm_relaxed64(&idx[j]) == S_TOMB) {
        shm_store64(&idx[j], S_EMPTY);
        dk_add(self, D_TOMBS, -1);
        j = (j - 1) & self->mask;
    }
}

/* ------------------------------------------------------------------ lock */

/* Take the writer mutex. wait >= 0: spin, then block up to `wait` seconds
 * without the GIL. wait == -1 / -2: the caller holds it (flock backend;
 * -2: its predecessor died). Returns SHM_OK, SHM_OWNER_DIED, SHM_BUSY, or -1
 * with an exception set. */
static int
dk_lock(DictObject *self, double wait)
{
    if (wait < 0) {
        return wait < -1.5 ? SHM_OWNER_DIED : SHM_OK;
    }
    pthread_mutex_t *m = (pthread_mutex_t *)RT(self, 0);
    int got = shm_mutex_trylock(m);
    if (got == SHM_BUSY) {
        got = shm_mutex_spin(m, 64, 16);
    }
    if (got == SHM_BUSY && wait > 0) {
        self->r.inflight++;
        Py_BEGIN_ALLOW_THREADS
        got = shm_mutex_timedlock(m, wait);
        Py_END_ALLOW_THREADS
        shm_view_leave(&self->r);
        if (got >= 0 && got != SHM_BUSY && dk_ready(self)) {
            pthread_mutex_unlock(m); /* closed by another thread meanwhile */
            return -1;
        }
    }
    if (got < 0) {
        shm_mutex_error(&E, got);
        return -1;
    }
    return got;
}

static void
dk_unlock(DictObject *self, double wait, int changed)
{
    if (changed) {
        /* release: pairs with the acquire load in wait_changed */
        char *w = RT(self, D_WRITES);
        shm_store64(w, shm_relaxed64(w) + 1);
    }
    if (wait >= 0) {
        pthread_mutex_unlock((pthread_mutex_t *)RT(self, 0));
    }
    if (changed) {
        /* seq_cst fence: the writes store is visible before we read waiters;
         * pairs with the fetch-add and re-check in Dict_wait(). */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n((uint32_t *)RT(self, D_WAITERS), __ATOMIC_RELAXED) != 0) {
            shm_futex_wake((uint32_t *)RT(self, D_WRITES), INT_MAX);
        }
    }
}

/* Begin changing the table: repair after a dead writer, then mark dirty. */
static int
dk_begin(DictObject *self, int got)
{
    char *dirty = AT(self, D_DIRTY);
    if (got == SHM_OWNER_DIED || shm_relaxed64(dirty)) {
        /* Counted first: a repairer killed inside the repair is a death too. */
        dk_add(self, D_DEATHS, 1);
        shm_set_relaxed64(dirty, 1);
        if (dk_rebuild(self)) {
            return -1;
        }
    }
    shm_set_relaxed64(dirty, 1);
    /* Everything this writer stores comes after every slot change before it. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    return 0;
}

static inline void
dk_end(DictObject *self)
{
    shm_set_relaxed64(AT(self, D_DIRTY), 0);
}

/* ------------------------------------------------------------------ write ops */

/* Out of entries or heap with Full (or MessageTooLarge) set: a dict that
 * grows replaces it with NeedGrowth(bytes the entry needs), and the caller
 * builds the next generation and retries. Returns 0 (dk_store's error). */
static uint64_t
dk_out_of_room(DictObject *self, uint64_t units)
{
    if (self->grow) {
        PyObject *n = PyLong_FromUnsignedLongLong(units * UNIT);
        if (n != NULL) {
            PyErr_SetObject(NeedGrowth, n);
            Py_DECREF(n);
        }
    }
    return 0;
}

/* Store (k, val) in a new block; old block (at *pos) freed. Returns the new
 * version, 0 with Full / MessageTooLarge set, or (uint64)-1 on other errors. */
static uint64_t
dk_store(DictObject *self, const dkey *k, const char *val, uint64_t vlen, int64_t pos,
         uint64_t old_off, int64_t ins)
{
    uint64_t bytes = B_HEAD + (uint64_t)k->n + vlen;
    uint64_t units = (bytes + UNIT - 1) / UNIT;
    if (bytes > self->heap_size) {
        PyErr_Format(MessageTooLarge,
                     "dict %R: an entry of %llu bytes can never fit its %llu-byte heap", self->name,
                     (unsigned long long)bytes, (unsigned long long)self->heap_size);
        return dk_out_of_room(self, units);
    }
    uint64_t *idx = dk_index(self, shm_relaxed64(AT(self, D_EPOCH)));
    if (pos < 0) {
        uint64_t count = shm_relaxed64(AT(self, D_COUNT));
        if (count >= self->capacity) {
            PyErr_Format(Full, "dict %R is full: %llu entries (its capacity)", self->name,
                         (unsigned long long)count);
            return dk_out_of_room(self, units);
        }
        uint64_t tombs = shm_relaxed64(AT(self, D_TOMBS));
        int empty = ins >= 0 && shm_relaxed64(&idx[ins]) == S_EMPTY;
        if (ins < 0 || (empty && count + tombs + 1 > self->nslots / 16 * 13)) {
            dk_compact(self);
            idx = dk_index(self, shm_relaxed64(AT(self, D_EPOCH)));
            uint64_t dummy;
            pos = dk_find(self, idx, k, &ins, &dummy);
            if (ins < 0) {
                PyErr_Format(E.layout_error, "dict %R: no free slot after compaction", self->name);
                return (uint64_t)-1;
            }
        }
    }
    uint64_t off = dk_alloc(self, units);
    if (off == BAD_LIST || off == NO_BLOCK) {
        uint64_t used = shm_relaxed64(AT(self, D_USED));
        if (off == NO_BLOCK && (used > self->heap_size || self->heap_size - used < units * UNIT)) {
            PyErr_Format(Full, "dict %R is full: %llu of %llu heap bytes used, %llu more needed",
                         self->name, (unsigned long long)used,
                         (unsigned long long)self->heap_size, (unsigned long long)(units * UNIT));
            return dk_out_of_room(self, units);
        }
        /* Coalesce free space (or repair a corrupt free list), then retry once. */
        if (dk_rebuild(self)) {
            return (uint64_t)-1;
        }
        idx = dk_index(self, shm_relaxed64(AT(self, D_EPOCH)));
        pos = dk_find(self, idx, k, &ins, &old_off);
        off = dk_alloc(self, units);
        if (off == BAD_LIST || off == NO_BLOCK) {
            PyErr_Format(Full,
                         "dict %R is full: no contiguous %llu bytes in its heap (fragmented)",
                         self->name, (unsigned long long)(units * UNIT));
            return dk_out_of_room(self, units);
        }
    }
    shm_crash("dict.set.allocated");
    uint64_t ver = dk_fill(self, off, units, k, val, vlen);
    shm_crash("dict.set.sealed");
    uint64_t at = pos >= 0 ? (uint64_t)pos : (uint64_t)ins;
    int was_tomb = pos < 0 && shm_relaxed64(&idx[at]) == S_TOMB;
    /* release: the commit point; pairs with the acquire load of the slot in
     * dk_read_once() */
    shm_store64(&idx[at], dk_word(k->h, off));
    shm_crash("dict.set.published");
    if (pos >= 0) {
        uint64_t old_units = ld32(HEAP(self, old_off) + B_UNITS);
        dk_push_free(self, old_off, old_units);
        dk_add(self, D_USED, -(int64_t)(old_units * UNIT));
    }
    else {
        dk_add(self, D_COUNT, 1);
        if (was_tomb) {
            dk_add(self, D_TOMBS, -1);
        }
    }
    dk_add(self, D_USED, (int64_t)(units * UNIT));
    shm_crash("dict.set.counted");
    return ver;
}

/* Remove the entry at slot pos (block at off); returns its value (bytes) if want. */
static PyObject *
dk_remove(DictObject *self, uint64_t *idx, int64_t pos, uint64_t off, PyObject **keyout)
{
    char *b = HEAP(self, off);
    uint32_t klen = ld32(b + B_KLEN), vlen = ld32(b + B_VLEN), units = ld32(b + B_UNITS);
    uint64_t kn = klen & ~KSTR;
    /* Copy out before freeing. bytes/str are not tracked by the GC, so no
     * Python code can run here. */
    PyObject *val = PyBytes_FromStringAndSize(b + B_HEAD + kn, vlen);
    PyObject *key = NULL;
    if (val == NULL) {
        return NULL;
    }
    if (keyout != NULL) {
        key = dk_key_object(b + B_HEAD, klen);
        if (key == NULL) {
            PyErr_Clear();
            key = PyBytes_FromStringAndSize(b + B_HEAD, (Py_ssize_t)kn);
            if (key == NULL) {
                Py_DECREF(val);
                return NULL;
            }
        }
    }
    dk_unlink_slot(self, idx, (uint64_t)pos);
    shm_crash("dict.delete.unlinked");
    dk_push_free(self, off, units);
    dk_add(self, D_USED, -(int64_t)((uint64_t)units * UNIT));
    dk_add(self, D_COUNT, -1);
    if (keyout != NULL) {
        *keyout = key;
    }
    return val;
}

static void
dk_clear(DictObject *self)
{
    uint64_t epoch = shm_relaxed64(AT(self, D_EPOCH));
    memset(dk_index(self, epoch + 1), 0, (size_t)(8 * self->nslots));
    shm_crash("dict.clear.built");
    dk_flip(self, epoch);
    /* Readers of old blocks see the epoch change; every new block starts
     * with an odd seq and a release fence after this flip. */
    for (int c = 0; c < D_CLASSES; c++) {
        shm_set_relaxed64(dk_head(self, c), 0);
    }
    shm_set_relaxed64(AT(self, D_BUMP), 0);
    shm_set_relaxed64(AT(self, D_COUNT), 0);
    shm_set_relaxed64(AT(self, D_TOMBS), 0);
    shm_set_relaxed64(AT(self, D_USED), 0);
}

/* One write op under the lock. */
static PyObject *
dk_op_locked(DictObject *self, int op, const dkey *k, const char *val, Py_ssize_t vlen,
             int have_val, uint64_t expect, int *changed, PyObject **keyout, int *cas)
{
    uint64_t epoch = shm_relaxed64(AT(self, D_EPOCH));
    uint64_t *idx = dk_index(self, epoch);
    int64_t ins = -1, pos = -1;
    uint64_t off = 0;
    if (k != NULL) {
        pos = dk_find(self, idx, k, &ins, &off);
    }
    switch (op) {
    case OP_SET: {
        uint64_t ver = dk_store(self, k, val, (uint64_t)vlen, pos, off, ins);
        if (ver == 0 || ver == (uint64_t)-1) {
            return NULL;
        }
        *changed = 1;
        return PyLong_FromUnsignedLongLong(ver);
    }
    case OP_POP:
        if (pos < 0) {
            Py_RETURN_NONE;
        }
        *changed = 1;
        return dk_remove(self, idx, pos, off, NULL);
    case OP_SETDEFAULT:
        if (pos >= 0) {
            char *b = HEAP(self, off);
            uint32_t kn = ld32(b + B_KLEN) & ~KSTR;
            return PyBytes_FromStringAndSize(b + B_HEAD + kn, ld32(b + B_VLEN));
        }
        else {
            uint64_t ver = dk_store(self, k, val, (uint64_t)vlen, pos, off, ins);
            if (ver == 0 || ver == (uint64_t)-1) {
                return NULL;
            }
            *changed = 1;
            Py_RETURN_NONE;
        }
    case OP_CAS: {
        uint64_t cur = pos >= 0 ? shm_relaxed64(HEAP(self, off) + B_SEQ) : 0;
        if (cur != expect) {
            *cas = 0;
            return PyLong_FromUnsignedLongLong(cur);
        }
        uint64_t ver = 0;
        if (have_val) {
            ver = dk_store(self, k, val, (uint64_t)vlen, pos, off, ins);
            if (ver == 0 || ver == (uint64_t)-1) {
                return NULL;
            }
            *changed = 1;
        }
        else if (pos >= 0) {
            PyObject *old = dk_remove(self, idx, pos, off, NULL);
            if (old == NULL) {
                return NULL;
            }
            Py_DECREF(old);
            *changed = 1;
        }
        *cas = 1;
        return PyLong_FromUnsignedLongLong(ver);
    }
    case OP_CLEAR: {
        uint64_t n = shm_relaxed64(AT(self, D_COUNT));
        dk_clear(self);
        *changed = 1;
        return PyLong_FromUnsignedLongLong(n);
    }
    case OP_POPITEM:
        for (uint64_t i = 0; i < self->nslots; i++) {
            uint64_t w = shm_relaxed64(&idx[i]), units;
            if (w != S_EMPTY && w != S_TOMB && dk_check_live(self, w, &off, &units) == 0) {
                *changed = 1;
                return dk_remove(self, idx, (int64_t)i, off, keyout);
            }
        }
        Py_RETURN_NONE;
    case OP_REPAIR:
        if (dk_rebuild(self)) {
            return NULL;
        }
        Py_RETURN_NONE;
    case OP_COMPACT:
        dk_compact(self);
        *changed = 1;
        Py_RETURN_NONE;
    }
    PyErr_Format(PyExc_ValueError, "unknown dict op %d", op);
    return NULL;
}

/* The whole write: lock, repair if needed, op, unlock. BusySentinel when the
 * mutex stayed busy for `wait` seconds. */
static PyObject *
dk_write(DictObject *self, int op, PyObject *key, PyObject *data, uint64_t expect, double wait)
{
    dkey k;
    Py_buffer src = {0};
    int have_val = 0;
    if (dk_ready(self)) {
        return NULL;
    }
    if (self->readonly) {
        PyErr_SetString(PyExc_PermissionError, "dict is open readonly");
        return NULL;
    }
    /* SET, POP, SETDEFAULT and CAS name a key (None is refused like any
     * non-str/bytes key); the whole-table ops take none. */
    int keyed = op == OP_SET || op == OP_POP || op == OP_SETDEFAULT || op == OP_CAS;
    if (keyed && dk_key(self, key, &k)) {
        return NULL;
    }
    if (data != Py_None) {
        if (PyObject_GetBuffer(data, &src, PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "dict values (codec 'bytes') are bytes-like objects, not %.50s; "
                         "use codec='pickle' or 'msgpack' for other types",
                         Py_TYPE(data)->tp_name);
            return NULL;
        }
        have_val = 1;
        if ((uint64_t)src.len > 0xffffffffu) {
            PyBuffer_Release(&src);
            PyErr_Format(MessageTooLarge, "dict %R: a value of %zd bytes", self->name, src.len);
            return NULL;
        }
    }
    /* (a buffer export may run Python code: check the mapping again) */
    if (dk_ready(self)) {
        if (have_val) {
            PyBuffer_Release(&src);
        }
        return NULL;
    }
    int got = dk_lock(self, wait);
    if (got < 0 || got == SHM_BUSY) {
        if (have_val) {
            PyBuffer_Release(&src);
        }
        if (got < 0) {
            return NULL;
        }
        Py_INCREF(BusySentinel);
        return BusySentinel;
    }
    if (dk_moved(self)) {
        /* A grower replaced this table: the caller remaps and retries. A holder
         * that died mid-write left its table's dirty word set (dk_begin sets it
         * before any change), so the next writer there repairs it even though
         * EOWNERDEAD was consumed here. */
        dk_unlock(self, wait, 0);
        if (have_val) {
            PyBuffer_Release(&src);
        }
        return Py_NewRef(MovedSentinel);
    }
    /* No Python code from here to dk_unlock: one critical section. */
    int changed = 0, cas = -1;
    PyObject *res = NULL, *popped = NULL;
    self->r.inflight++;
    if (dk_begin(self, got) == 0) {
        /* Only bytes, str and int are made in here: none is tracked by the
         * GC, so no collection (and no finalizer) can run under the lock. */
        res = dk_op_locked(self, op, keyed ? &k : NULL, have_val ? src.buf : NULL,
                           have_val ? src.len : 0, have_val, expect, &changed, &popped, &cas);
        dk_end(self); /* every error above leaves the table consistent */
    }
    dk_unlock(self, wait, changed);
    shm_view_leave(&self->r);
    if (have_val) {
        PyBuffer_Release(&src);
    }
    if (res != NULL && popped != NULL) {
        Py_SETREF(res, PyTuple_Pack(2, popped, res));
    }
    Py_XDECREF(popped);
    if (res != NULL && cas >= 0) {
        Py_SETREF(res, Py_BuildValue("(OO)", cas ? Py_True : Py_False, res));
    }
    return res;
}

/* ------------------------------------------------------------------ batches */

static void
dk_release_all(Py_buffer *bufs, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyBuffer_Release(&bufs[i]);
    }
}

/* update(): store keys[i] = values[i] for every i under one acquisition of
 * the writer mutex. Every key and value is checked before the lock is taken
 * (a bad one raises and nothing is stored). Each store is one crash-safe
 * write as in dk_store (a writer killed mid-batch leaves a prefix of it).
 * Returns (stored, need): need = 0 when all were stored, else the bytes the
 * next entry needs from a new generation (the caller grows and goes on from
 * `stored`); BUSY / MOVED as dk_write; Full and the like raised with the
 * first `stored` pairs in place, as dict.update() leaves them. */
static PyObject *
dk_update(DictObject *self, PyObject *keys, PyObject *values, double wait)
{
    if (dk_ready(self)) {
        return NULL;
    }
    if (self->readonly) {
        PyErr_SetString(PyExc_PermissionError, "dict is open readonly");
        return NULL;
    }
    if (!PyList_CheckExact(keys) || !PyList_CheckExact(values) ||
        PyList_GET_SIZE(keys) != PyList_GET_SIZE(values)) {
        PyErr_SetString(PyExc_TypeError, "_c_write(OP_UPDATE, keys, values): two lists");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(keys), ready = 0, done = 0;
    dkey *ks = PyMem_Malloc(sizeof(dkey) * (size_t)(n ? n : 1));
    Py_buffer *bufs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    PyObject *res = NULL;
    if (ks == NULL || bufs == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    /* Our own references: the keys stay alive while ks[] points into them (the
     * lists are update()'s own, never shared with another thread). */
    Py_INCREF(keys);
    Py_INCREF(values);
    for (; ready < n; ready++) {
        if (dk_key(self, PyList_GET_ITEM(keys, ready), &ks[ready])) {
            goto unref;
        }
        PyObject *v = PyList_GET_ITEM(values, ready);
        if (PyObject_GetBuffer(v, &bufs[ready], PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "dict values (codec 'bytes') are bytes-like objects, not %.50s",
                         Py_TYPE(v)->tp_name);
            goto unref;
        }
        if ((uint64_t)bufs[ready].len > 0xffffffffu) {
            PyBuffer_Release(&bufs[ready]);
            PyErr_Format(MessageTooLarge, "dict %R: a value of %zd bytes", self->name,
                         bufs[ready].len);
            goto unref;
        }
    }
    if (dk_ready(self)) { /* a buffer export may run Python code */
        goto unref;
    }
    int got = dk_lock(self, wait);
    if (got < 0) {
        goto unref;
    }
    if (got == SHM_BUSY || dk_moved(self)) {
        if (got != SHM_BUSY) {
            dk_unlock(self, wait, 0);
        }
        res = Py_NewRef(got == SHM_BUSY ? BusySentinel : MovedSentinel);
        goto unref;
    }
    /* No Python code from here to dk_unlock (bytes and ints only). */
    self->r.inflight++;
    uint64_t need = 0;
    int failed = dk_begin(self, got);
    for (; !failed && done < n; done++) {
        uint64_t *idx = dk_index(self, shm_relaxed64(AT(self, D_EPOCH)));
        int64_t ins = -1;
        uint64_t off = 0;
        int64_t pos = dk_find(self, idx, &ks[done], &ins, &off);
        uint64_t ver = dk_store(self, &ks[done], bufs[done].buf, (uint64_t)bufs[done].len, pos,
                                off, ins);
        if (ver == 0 || ver == (uint64_t)-1) {
            failed = 1;
            break;
        }
    }
    if (failed && PyErr_ExceptionMatches(NeedGrowth)) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        PyObject *arg = v != NULL ? PyTuple_GetItem(((PyBaseExceptionObject *)v)->args, 0) : NULL;
        need = arg != NULL ? PyLong_AsUnsignedLongLong(arg) : 0;
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
        if (need == 0 || PyErr_Occurred()) {
            PyErr_Clear();
            need = UNIT;
        }
        failed = 0;
    }
    dk_end(self); /* every error above leaves the table consistent */
    dk_unlock(self, wait, done > 0);
    shm_view_leave(&self->r);
    if (!failed) {
        res = Py_BuildValue("(nK)", done, (unsigned long long)need);
    }
unref:
    dk_release_all(bufs, ready);
    Py_DECREF(keys);
    Py_DECREF(values);
out:
    PyMem_Free(ks);
    PyMem_Free(bufs);
    return res;
}

/* ------------------------------------------------------------------ verify */

typedef struct {
    char *buf;
    size_t len, cap;
    int n;
} problems;

static void
pb_add(problems *p, const char *fmt, ...)
{
    p->n++;
    if (p->n > 50 || p->buf == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(p->buf + p->len, p->cap - p->len, fmt, ap);
    va_end(ap);
    if (w > 0 && p->len + (size_t)w + 1 < p->cap) {
        p->len += (size_t)w;
        p->buf[p->len++] = '\n';
        p->buf[p->len] = 0;
    }
}

static void
dk_verify_locked(DictObject *self, problems *p)
{
    uint64_t epoch = shm_relaxed64(AT(self, D_EPOCH));
    uint64_t *idx = dk_index(self, epoch);
    uint64_t bump = shm_relaxed64(AT(self, D_BUMP));
    if (bump > self->heap_size || bump % UNIT) {
        pb_add(p, "bump %llu is outside the %llu-byte heap", (unsigned long long)bump,
               (unsigned long long)self->heap_size);
        return;
    }
    if (shm_relaxed64(AT(self, D_DIRTY))) {
        pb_add(p, "a writer died mid-write and nobody has repaired it yet");
    }
    extent *ex = PyMem_RawMalloc(sizeof(extent) * (size_t)(self->capacity + self->heap_units + 1));
    if (ex == NULL) {
        pb_add(p, "out of memory");
        return;
    }
    uint64_t n = 0, live = 0, tombs = 0, used = 0, maxn = self->capacity + self->heap_units;
    for (uint64_t i = 0; i < self->nslots; i++) {
        uint64_t w = shm_relaxed64(&idx[i]), off, units;
        if (w == S_EMPTY) {
            continue;
        }
        if (w == S_TOMB) {
            tombs++;
            continue;
        }
        live++;
        if (dk_check_live(self, w, &off, &units)) {
            pb_add(p, "slot %llu: word %#llx names no whole block", (unsigned long long)i,
                   (unsigned long long)w);
            continue;
        }
        char *b = HEAP(self, off);
        uint32_t klen = ld32(b + B_KLEN);
        uint64_t h = shm_relaxed64(b + B_HASH);
        uint64_t kn = klen & ~KSTR;
        if (dk_hash(b + B_HEAD, (size_t)kn, klen & KSTR, self->seed) != h) {
            pb_add(p, "slot %llu: stored hash does not match its key", (unsigned long long)i);
        }
        /* Reachable: the probe from its home meets no empty slot and no
         * other live entry with the same key before it. */
        for (uint64_t j = h & self->mask; j != i; j = (j + 1) & self->mask) {
            uint64_t x = shm_relaxed64(&idx[j]), xo, xu;
            if (x == S_EMPTY) {
                pb_add(p, "slot %llu: unreachable (empty slot %llu on its probe)",
                       (unsigned long long)i, (unsigned long long)j);
                break;
            }
            if (x != S_TOMB && dk_check_live(self, x, &xo, &xu) == 0 &&
                shm_relaxed64(HEAP(self, xo) + B_HASH) == h &&
                ld32(HEAP(self, xo) + B_KLEN) == klen &&
                memcmp(HEAP(self, xo) + B_HEAD, b + B_HEAD, (size_t)kn) == 0) {
                pb_add(p, "slot %llu: duplicate of the key in slot %llu", (unsigned long long)i,
                       (unsigned long long)j);
                break;
            }
        }
        used += units * UNIT;
        if (n < maxn) {
            ex[n].off = off;
            ex[n].units = units;
            ex[n].slot = i;
            n++;
        }
    }
    if (live != shm_relaxed64(AT(self, D_COUNT))) {
        pb_add(p, "count word %llu, %llu live slots",
               (unsigned long long)shm_relaxed64(AT(self, D_COUNT)), (unsigned long long)live);
    }
    if (tombs != shm_relaxed64(AT(self, D_TOMBS))) {
        pb_add(p, "tombstone word %llu, %llu tombstones",
               (unsigned long long)shm_relaxed64(AT(self, D_TOMBS)), (unsigned long long)tombs);
    }
    if (used != shm_relaxed64(AT(self, D_USED))) {
        pb_add(p, "used word %llu, live blocks hold %llu bytes",
               (unsigned long long)shm_relaxed64(AT(self, D_USED)), (unsigned long long)used);
    }
    /* Free lists: bounded walks; each block in bounds, in its class, odd seq. */
    for (int c = 0; c < D_CLASSES; c++) {
        uint64_t h = shm_relaxed64(dk_head(self, c)), steps = 0;
        while (h) {
            uint64_t off = h - 1;
            if (off % UNIT || off >= bump || ++steps > self->heap_units) {
                pb_add(p, "free list %d: bad link %#llx (or a cycle)", c, (unsigned long long)h);
                break;
            }
            char *b = HEAP(self, off);
            uint64_t u = ld32(b + B_UNITS);
            if (u == 0 || u > (bump - off) / UNIT || dk_class(u) != c ||
                !(shm_relaxed64(b + B_SEQ) & 1)) {
                pb_add(p, "free list %d: block at %llu is not a free block of its class", c,
                       (unsigned long long)off);
                break;
            }
            if (n < maxn) {
                ex[n].off = off;
                ex[n].units = u;
                ex[n].slot = UINT64_MAX;
                n++;
            }
            h = shm_relaxed64(b + B_HASH);
        }
    }
    qsort(ex, (size_t)n, sizeof(extent), extent_cmp);
    uint64_t cur = 0, covered = 0;
    for (uint64_t j = 0; j < n; j++) {
        if (ex[j].off < cur) {
            pb_add(p, "blocks overlap at heap offset %llu", (unsigned long long)ex[j].off);
        }
        uint64_t end = ex[j].off + ex[j].units * UNIT;
        covered += ex[j].units * UNIT;
        if (end > cur) {
            cur = end;
        }
    }
    if (cur > bump) {
        pb_add(p, "a block ends at %llu, beyond bump %llu", (unsigned long long)cur,
               (unsigned long long)bump);
    }
    if (covered != bump) {
        pb_add(p, "%lld heap bytes below bump are neither live nor free (leaked)",
               (long long)(bump - covered));
    }
    PyMem_RawFree(ex);
}

/* ------------------------------------------------------------------ methods */

/* Pin a mapping: writable, or read-only when `readonly` (then PyBUF_SIMPLE). */
static int
dk_pin(shm_view *v, PyObject *buf, int readonly)
{
    memset(v, 0, sizeof(*v));
    if (PyObject_GetBuffer(buf, &v->buf, readonly ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0) {
        return -1;
    }
    v->have_buf = 1;
    v->base = (char *)v->buf.buf;
    v->len = v->buf.len;
    return 0;
}

typedef struct {
    long long body, cap, nslots, heap, idx0, idx1, heap_off;
    unsigned long long gen;
} geometry;

/* Check a table's geometry and that it fits the pinned view. */
static int
dk_geometry_ok(const shm_view *v, const geometry *g)
{
    if (g->cap < 1 || g->nslots < 8 || (g->nslots & (g->nslots - 1)) || g->cap > g->nslots ||
        g->heap < UNIT || g->heap % UNIT || (g->heap / UNIT) > 0xffffffffLL || g->body % 64 ||
        g->idx0 < D_FREE + 8 * D_CLASSES || g->idx0 % 64 || g->idx1 != g->idx0 + 8 * g->nslots ||
        g->heap_off < g->idx1 + 8 * g->nslots || g->heap_off % 64) {
        PyErr_SetString(E.layout_error, "dict: inconsistent table geometry");
        return -1;
    }
    return shm_check(&E, v, g->body, g->heap_off + g->heap, 64);
}

/* Make the pinned view `nv` (geometry g) this handle's table; the old one is
 * released (no call ever uses the table without the GIL: waits use the root). */
static void
dk_set_table(DictObject *self, shm_view *nv, const geometry *g)
{
    if (self->v.have_buf) {
        shm_view_close(&self->v);
    }
    self->v = *nv;
    self->body = (Py_ssize_t)g->body;
    self->capacity = (uint64_t)g->cap;
    self->nslots = (uint64_t)g->nslots;
    self->mask = (uint64_t)g->nslots - 1;
    self->heap_size = (uint64_t)g->heap;
    self->heap_units = (uint64_t)g->heap / UNIT;
    self->idx_off[0] = (uint64_t)g->idx0;
    self->idx_off[1] = (uint64_t)g->idx1;
    self->heap_off = (uint64_t)g->heap_off;
    self->gen = g->gen;
}

#define GEOMETRY_FMT "OLLLLLLLK"
#define GEOMETRY_ARGS(b, g) &(b), &(g).body, &(g).cap, &(g).nslots, &(g).heap, &(g).idx0, \
    &(g).idx1, &(g).heap_off, &(g).gen

/* _c_attach(root, name, root_body_off, max_key, seed, flock, grow, encode, decode):
 * pin the root segment (writer mutex, writes, generation word). The table
 * comes next, from _c_retarget. */
static PyObject *
Dict_attach(DictObject *self, PyObject *args)
{
    PyObject *buf, *name, *enc, *dec;
    long long rbody, max_key;
    unsigned long long seed;
    int flock, grow;
    if (!PyArg_ParseTuple(args, "OULLKppOO:_c_attach", &buf, &name, &rbody, &max_key, &seed,
                          &flock, &grow, &enc, &dec)) {
        return NULL;
    }
    if (self->attached) {
        PyErr_SetString(PyExc_RuntimeError, "already attached");
        return NULL;
    }
    if (max_key < 1 || rbody % 64) {
        PyErr_SetString(E.layout_error, "dict: inconsistent root geometry");
        return NULL;
    }
    if (dk_pin(&self->r, buf, 0) < 0) {
        PyErr_Clear();
        if (dk_pin(&self->r, buf, 1) < 0) {
            return NULL;
        }
        self->readonly = 1;
    }
    if (shm_check(&E, &self->r, rbody, D_FREE, 64)) {
        shm_view_close(&self->r);
        return NULL;
    }
    self->rbody = (Py_ssize_t)rbody;
    self->max_key = (uint64_t)max_key;
    self->seed = seed;
    self->flock = flock;
    self->grow = grow;
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
    Py_XSETREF(self->encode, enc == Py_None ? NULL : Py_NewRef(enc));
    Py_XSETREF(self->decode, dec == Py_None ? NULL : Py_NewRef(dec));
    return Py_NewRef(Py_None);
}

/* _c_retarget(table, body_off, capacity, nslots, heap_size, idx0, idx1, heap_off, gen):
 * use this mapping as the table (generation `gen`) from now on. */
static PyObject *
Dict_retarget(DictObject *self, PyObject *args)
{
    PyObject *buf;
    geometry g;
    shm_view nv;
    if (!PyArg_ParseTuple(args, GEOMETRY_FMT ":_c_retarget", GEOMETRY_ARGS(buf, g))) {
        return NULL;
    }
    if (self->r.base == NULL || self->r.closed) {
        PyErr_SetString(E.closed, "dict handle is closed");
        return NULL;
    }
    if (dk_pin(&nv, buf, self->readonly) < 0) {
        return NULL;
    }
    if (dk_geometry_ok(&nv, &g)) {
        shm_view_close(&nv);
        return NULL;
    }
    dk_set_table(self, &nv, &g);
    self->attached = 1;
    Py_RETURN_NONE;
}

/* _c_grow(table, body_off, capacity, nslots, heap_size, idx0, idx1, heap_off, gen, wait)
 * -> entries copied | BUSY | MOVED. Under the writer lock (wait as for
 * _c_write): repair the current table if a writer died in it, copy every live
 * block (seq included, so versions carry over) into the new, empty, larger
 * table, then publish it with one release store of the root's generation
 * word, and use it. Killed before that store, the old table stays the
 * current one, untouched (the copy only reads it). */
static PyObject *
Dict_grow(DictObject *self, PyObject *args)
{
    PyObject *buf;
    geometry g;
    double wait;
    shm_view nv;
    if (!PyArg_ParseTuple(args, GEOMETRY_FMT "d:_c_grow", GEOMETRY_ARGS(buf, g), &wait)) {
        return NULL;
    }
    if (dk_ready(self)) {
        return NULL;
    }
    if (self->readonly) {
        PyErr_SetString(PyExc_PermissionError, "dict is open readonly");
        return NULL;
    }
    if (dk_pin(&nv, buf, 0) < 0) {
        return NULL;
    }
    if (dk_geometry_ok(&nv, &g)) {
        shm_view_close(&nv);
        return NULL;
    }
    int got = dk_lock(self, wait);
    if (got < 0 || got == SHM_BUSY) {
        shm_view_close(&nv);
        return got < 0 ? NULL : Py_NewRef(BusySentinel);
    }
    if (dk_moved(self) || g.gen != self->gen + 1) {
        dk_unlock(self, wait, 0);
        shm_view_close(&nv);
        return Py_NewRef(MovedSentinel);
    }
    self->r.inflight++;
    if (dk_begin(self, got)) {
        dk_unlock(self, wait, 0);
        shm_view_leave(&self->r);
        shm_view_close(&nv);
        return NULL;
    }
    char *nb = nv.base + g.body;
    uint64_t *from = dk_index(self, shm_relaxed64(AT(self, D_EPOCH)));
    uint64_t *to = (uint64_t *)(nb + g.idx0);
    char *nheap = nb + g.heap_off;
    uint64_t nmask = (uint64_t)g.nslots - 1, top = 0, n = 0, dropped = 0;
    uint64_t half = shm_relaxed64(AT(self, D_COUNT)) / 2;
    for (uint64_t i = 0; i < self->nslots; i++) {
        uint64_t w = shm_relaxed64(&from[i]), off, units;
        if (w == S_EMPTY || w == S_TOMB) {
            continue;
        }
        if (dk_check_live(self, w, &off, &units)) {
            dropped++; /* corrupt: the next repair would drop it too */
            continue;
        }
        if (n >= (uint64_t)g.cap || units * UNIT > (uint64_t)g.heap - top) {
            dk_end(self);
            dk_unlock(self, wait, 0);
            shm_view_leave(&self->r);
            shm_view_close(&nv);
            PyErr_SetString(E.layout_error, "dict: the new generation is too small");
            return NULL;
        }
        memcpy(nheap + top, HEAP(self, off), (size_t)(units * UNIT));
        uint64_t j = shm_relaxed64(HEAP(self, off) + B_HASH) & nmask;
        while (to[j] != S_EMPTY) {
            j = (j + 1) & nmask;
        }
        to[j] = dk_word(shm_relaxed64(HEAP(self, off) + B_HASH), top);
        top += units * UNIT;
        if (++n == half) {
            shm_crash("dict.grow.copying");
        }
    }
    /* The new table's counters; stamps continue, so versions keep growing. */
    shm_set_relaxed64(nb + D_COUNT, n);
    shm_set_relaxed64(nb + D_USED, top);
    shm_set_relaxed64(nb + D_BUMP, top);
    shm_set_relaxed64(nb + D_STAMP, shm_relaxed64(AT(self, D_STAMP)));
    shm_set_relaxed64(nb + D_DEATHS, shm_relaxed64(AT(self, D_DEATHS)));
    shm_set_relaxed64(nb + D_COMPACTIONS, shm_relaxed64(AT(self, D_COMPACTIONS)));
    shm_set_relaxed64(nb + D_DROPPED, shm_relaxed64(AT(self, D_DROPPED)) + dropped);
    shm_crash("dict.grow.copied");
    /* release: the whole new table is stored before the generation word
     * names it; pairs with the acquire load in dk_moved() */
    shm_store64(RT(self, D_GEN), g.gen);
    shm_crash("dict.grow.published");
    /* release: a reader still copying from the old table fails its epoch
     * re-check from here on, so the caller may free that memory (the root's
     * first table) under it; pairs with the acquire fence in dk_read_once() */
    char *ep = AT(self, D_EPOCH);
    shm_store64(ep, shm_relaxed64(ep) + 2);
    dk_end(self);
    dk_unlock(self, wait, 1);
    shm_view_leave(&self->r);
    dk_set_table(self, &nv, &g);
    return PyLong_FromUnsignedLongLong(n);
}

/* _c_gen() -> the root's current generation (acquire) */
static PyObject *
Dict_gen(DictObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->r.base == NULL || self->r.closed) {
        PyErr_SetString(E.closed, "dict handle is closed");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(shm_load64(RT(self, D_GEN)));
}

static PyObject *
Dict_detach(DictObject *self, PyObject *Py_UNUSED(ignored))
{
    shm_view_close(&self->v);
    shm_view_close(&self->r);
    Py_RETURN_NONE;
}

/* __getitem__: lock-free read; KeyError if absent. */
static PyObject *
Dict_subscript(DictObject *self, PyObject *key)
{
    dkey k;
    PyObject *val = NULL;
    uint64_t ver;
    if (dk_ready(self) || dk_key(self, key, &k)) {
        return NULL;
    }
    int rc = dk_read_follow(self, &k, 1, D_TRIES, &val, &ver);
    if (rc == RD_HIT) {
        return dk_decode(self, val);
    }
    if (rc == RD_MISS) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    if (rc == RD_ERROR) {
        return NULL;
    }
    return PyObject_CallMethod((PyObject *)self, "_getitem_slow", "O", key);
}

/* Encode a value through the codec (outside any lock). New reference. */
static PyObject *
dk_encode(DictObject *self, PyObject *value)
{
    if (self->encode == NULL) {
        return Py_NewRef(value);
    }
    return PyObject_CallOneArg(self->encode, value);
}

/* Does a fast-path write result need the Python slow path (lock busy, table
 * replaced by a newer generation, or a full table that grows)? If so the
 * result (or the NeedGrowth error) is dropped. */
static int
dk_slow(PyObject *res)
{
    if (res == BusySentinel || res == MovedSentinel) {
        Py_DECREF(res);
        return 1;
    }
    if (res == NULL && PyErr_ExceptionMatches(NeedGrowth)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* __setitem__ / __delitem__. */
static int
Dict_ass_subscript(DictObject *self, PyObject *key, PyObject *value)
{
    PyObject *res;
    if (value == NULL) {
        res = self->flock || self->readonly
                  ? Py_NewRef(BusySentinel)
                  : dk_write(self, OP_POP, key, Py_None, 0, 0.0);
        if (dk_slow(res)) {
            res = PyObject_CallMethod((PyObject *)self, "_write_slow", "iOOKO", OP_POP, key,
                                      Py_None, 0ULL, Py_None);
        }
        if (res == NULL) {
            return -1;
        }
        if (res == Py_None) {
            Py_DECREF(res);
            PyErr_SetObject(PyExc_KeyError, key);
            return -1;
        }
        Py_DECREF(res);
        return 0;
    }
    PyObject *data = dk_encode(self, value);
    if (data == NULL) {
        return -1;
    }
    res = self->flock || self->readonly ? Py_NewRef(BusySentinel)
                                        : dk_write(self, OP_SET, key, data, 0, 0.0);
    if (dk_slow(res)) {
        res = PyObject_CallMethod((PyObject *)self, "_write_slow", "iOOKO", OP_SET, key, data,
                                  0ULL, Py_None);
    }
    Py_DECREF(data);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

static Py_ssize_t
Dict_length(DictObject *self)
{
    if (dk_ready(self) || (dk_moved(self) && dk_follow(self))) {
        return -1;
    }
    /* acquire: a count, not a snapshot; writers change it after publishing */
    uint64_t n = shm_load64(AT(self, D_COUNT));
    return (Py_ssize_t)(n > self->capacity ? self->capacity : n);
}

static int
Dict_contains(DictObject *self, PyObject *key)
{
    dkey k;
    PyObject *val = NULL;
    uint64_t ver;
    if (dk_ready(self)) {
        return -1;
    }
    if (!PyUnicode_Check(key) && !PyBytes_Check(key)) {
        return 0;
    }
    if (dk_key(self, key, &k)) {
        if (PyErr_ExceptionMatches(MessageTooLarge)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    int rc = dk_read_follow(self, &k, 0, D_TRIES, &val, &ver);
    if (rc == RD_RETRY) {
        PyObject *r = PyObject_CallMethod((PyObject *)self, "_read_slow", "O", key);
        if (r == NULL) {
            return -1;
        }
        int hit = r != Py_None;
        Py_DECREF(r);
        return hit;
    }
    return rc == RD_ERROR ? -1 : rc == RD_HIT;
}

/* get(key, default=None) */
static PyObject *
Dict_get(DictObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(key, default=None)");
        return NULL;
    }
    PyObject *dflt = nargs == 2 ? args[1] : Py_None;
    dkey k;
    PyObject *val = NULL;
    uint64_t ver;
    if (dk_ready(self) || dk_key(self, args[0], &k)) {
        return NULL;
    }
    int rc = dk_read_follow(self, &k, 1, D_TRIES, &val, &ver);
    if (rc == RD_HIT) {
        return dk_decode(self, val);
    }
    if (rc == RD_MISS) {
        return Py_NewRef(dflt);
    }
    if (rc == RD_ERROR) {
        return NULL;
    }
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_read_slow", "O", args[0]);
    if (r == NULL || r == Py_None) {
        Py_XDECREF(r);
        return r == NULL ? NULL : Py_NewRef(dflt);
    }
    PyObject *raw = Py_NewRef(PyTuple_GET_ITEM(r, 1));
    Py_DECREF(r);
    return dk_decode(self, raw);
}

/* _c_read(key, tries) -> (version, raw bytes) | None (absent) | False (retry) */
static PyObject *
Dict_read(DictObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_c_read(key, tries)");
        return NULL;
    }
    int tries = dk_as_int(args[1]);
    if (tries == -1 && PyErr_Occurred()) {
        return NULL;
    }
    dkey k;
    PyObject *val = NULL;
    uint64_t ver;
    if (dk_ready(self) || dk_key(self, args[0], &k)) {
        return NULL;
    }
    int rc = dk_read_follow(self, &k, 1, tries < 1 ? 1 : tries, &val, &ver);
    if (rc == RD_HIT) {
        PyObject *out = Py_BuildValue("(KN)", (unsigned long long)ver, val);
        return out;
    }
    if (rc == RD_MISS) {
        Py_RETURN_NONE;
    }
    if (rc == RD_ERROR) {
        return NULL;
    }
    Py_RETURN_FALSE;
}

/* _c_write(op, key, data, expect, wait) -> result | BUSY */
static PyObject *
Dict_write(DictObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_c_write(op, key, data, expect, wait)");
        return NULL;
    }
    int op = dk_as_int(args[0]);
    unsigned long long expect = PyLong_AsUnsignedLongLong(args[3]);
    double wait = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (op == OP_UPDATE) {
        return dk_update(self, args[1], args[2], wait);
    }
    return dk_write(self, op, args[1], args[2], (uint64_t)expect, wait);
}

/* _c_scan(mode, tries) -> list | False: keys (0), raw values (1) or (key, raw) (2)
 * of every entry, each validated like a read; False if writers kept changing
 * the index (the caller retries). */
static PyObject *
Dict_scan(DictObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "_c_scan(mode)");
        return NULL;
    }
    int mode = dk_as_int(args[0]);
    if ((mode == -1 && PyErr_Occurred()) || dk_ready(self)) {
        return NULL;
    }
    if (dk_moved(self)) {
        if (dk_follow(self)) {
            return NULL;
        }
        Py_RETURN_FALSE; /* the caller scans again, in the new generation */
    }
    uint64_t e1 = shm_load64(AT(self, D_EPOCH));
    uint64_t *idx = dk_index(self, e1);
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (uint64_t i = 0; i < self->nslots; i++) {
        for (int t = 0;; t++) {
            if (t > D_TRIES) {
                Py_DECREF(out);
                Py_RETURN_FALSE;
            }
            uint64_t w = shm_load64(&idx[i]);
            if (w == S_EMPTY || w == S_TOMB) {
                break;
            }
            uint64_t off = dk_block_of(self, w);
            if (off == UINT64_MAX) {
                continue;
            }
            char *b = HEAP(self, off);
            uint64_t s1 = shm_load64(b + B_SEQ);
            uint32_t klen = ld32(b + B_KLEN), vlen = ld32(b + B_VLEN), units = ld32(b + B_UNITS);
            if ((s1 & 1) || dk_block_fits(self, off, klen, vlen, units)) {
                continue;
            }
            uint64_t kn = klen & ~KSTR;
            PyObject *kraw = mode != 1 ? PyBytes_FromStringAndSize(b + B_HEAD, (Py_ssize_t)kn) : NULL;
            PyObject *vraw = mode != 0 ? PyBytes_FromStringAndSize(b + B_HEAD + kn, vlen) : NULL;
            if ((mode != 1 && kraw == NULL) || (mode != 0 && vraw == NULL)) {
                Py_XDECREF(kraw);
                Py_XDECREF(vraw);
                Py_DECREF(out);
                return NULL;
            }
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (shm_relaxed64(b + B_SEQ) != s1 || shm_relaxed64(&idx[i]) != w) {
                Py_XDECREF(kraw);
                Py_XDECREF(vraw);
                continue;
            }
            PyObject *key = NULL, *item;
            if (kraw != NULL) {
                key = (klen & KSTR) ? PyUnicode_FromEncodedObject(kraw, "utf-8", "strict")
                                    : Py_NewRef(kraw);
                Py_DECREF(kraw);
                if (key == NULL) {
                    Py_XDECREF(vraw);
                    Py_DECREF(out);
                    return NULL;
                }
            }
            if (mode == 0) {
                item = key;
            }
            else if (mode == 1) {
                item = vraw;
            }
            else {
                item = PyTuple_Pack(2, key, vraw);
                Py_DECREF(key);
                Py_DECREF(vraw);
            }
            if (item == NULL || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(item);
            break;
        }
        if (shm_load64(AT(self, D_EPOCH)) != e1) {
            Py_DECREF(out);
            Py_RETURN_FALSE;
        }
    }
    return out;
}

/* _c_verify(wait) -> [problem, ...] | BUSY. Writable handles take the lock
 * (repairing first, as any writer would); read-only ones check unlocked. */
static PyObject *
Dict_verify(DictObject *self, PyObject *arg)
{
    double wait = PyFloat_AsDouble(arg);
    if ((wait == -1.0 && PyErr_Occurred()) || dk_ready(self)) {
        return NULL;
    }
    problems p = {PyMem_RawMalloc(8192), 0, 8192, 0};
    if (p.buf == NULL) {
        return PyErr_NoMemory();
    }
    p.buf[0] = 0;
    int locked = 0;
    if (self->readonly && dk_moved(self)) {
        PyMem_RawFree(p.buf);
        return Py_NewRef(MovedSentinel);
    }
    if (!self->readonly) {
        int got = dk_lock(self, wait);
        if (got < 0 || got == SHM_BUSY) {
            PyMem_RawFree(p.buf);
            return got < 0 ? NULL : Py_NewRef(BusySentinel);
        }
        if (dk_moved(self)) {
            dk_unlock(self, wait, 0);
            PyMem_RawFree(p.buf);
            return Py_NewRef(MovedSentinel);
        }
        locked = 1;
        self->r.inflight++;
        if (got == SHM_OWNER_DIED || shm_relaxed64(AT(self, D_DIRTY))) {
            if (dk_begin(self, got) == 0) {
                dk_end(self);
            }
            else {
                PyErr_Clear();
                pb_add(&p, "repair failed (out of memory)");
            }
        }
    }
    dk_verify_locked(self, &p);
    if (locked) {
        dk_unlock(self, wait, 0);
        shm_view_leave(&self->r);
    }
    PyObject *text = PyUnicode_DecodeUTF8(p.buf, (Py_ssize_t)p.len, "replace");
    int n = p.n;
    PyMem_RawFree(p.buf);
    if (text == NULL) {
        return NULL;
    }
    PyObject *lines = PyUnicode_Splitlines(text, 0);
    Py_DECREF(text);
    if (lines != NULL && n > 50) {
        PyObject *more = PyUnicode_FromFormat("... and %d more problems", n - 50);
        if (more == NULL || PyList_Append(lines, more) < 0) {
            Py_XDECREF(more);
            Py_DECREF(lines);
            return NULL;
        }
        Py_DECREF(more);
    }
    return lines;
}

/* _c_wait(expected, seconds) -> bool: sleep while the low 32 bits of writes
 * equal `expected` (True: changed or woken; False: timed out). */
static PyObject *
Dict_wait(DictObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_c_wait(expected, seconds)");
        return NULL;
    }
    unsigned long expected = PyLong_AsUnsignedLong(args[0]);
    double seconds = PyFloat_AsDouble(args[1]);
    if (PyErr_Occurred() || dk_ready(self)) {
        return NULL;
    }
    uint32_t *waiters = (uint32_t *)RT(self, D_WAITERS);
    uint32_t *word = (uint32_t *)RT(self, D_WRITES);
    if (self->readonly) {
        /* cannot count ourselves in: poll (futex_wait still works read-only) */
        int rc;
        self->r.inflight++;
        Py_BEGIN_ALLOW_THREADS
        rc = shm_futex_wait(word, (uint32_t)expected, seconds < 0.005 ? seconds : 0.005);
        Py_END_ALLOW_THREADS
        shm_view_leave(&self->r);
        return PyBool_FromLong(rc == 0 || __atomic_load_n(word, __ATOMIC_ACQUIRE) != (uint32_t)expected);
    }
    /* seq_cst: count ourselves in before re-checking; pairs with the
     * writer's fence in dk_unlock() (Dekker). */
    __atomic_fetch_add(waiters, 1, __ATOMIC_SEQ_CST);
    int rc = 0;
    if (__atomic_load_n(word, __ATOMIC_SEQ_CST) == (uint32_t)expected) {
        self->r.inflight++;
        Py_BEGIN_ALLOW_THREADS
        rc = shm_futex_wait(word, (uint32_t)expected, seconds);
        Py_END_ALLOW_THREADS
        shm_view_leave(&self->r);
    }
    if (self->r.base != NULL) {
        __atomic_fetch_sub(waiters, 1, __ATOMIC_SEQ_CST);
    }
    return PyBool_FromLong(rc == 0);
}

/* _c_counters() -> (writes, epoch, count, tombs, used, bump, dirty, deaths,
 *                   waiters, compactions, dropped) */
static PyObject *
Dict_counters(DictObject *self, PyObject *Py_UNUSED(ignored))
{
    if (dk_ready(self)) {
        return NULL;
    }
    return Py_BuildValue(
        "(KKKKKKKKKKK)", (unsigned long long)shm_load64(RT(self, D_WRITES)),
        (unsigned long long)shm_load64(AT(self, D_EPOCH)),
        (unsigned long long)shm_load64(AT(self, D_COUNT)),
        (unsigned long long)shm_load64(AT(self, D_TOMBS)),
        (unsigned long long)shm_load64(AT(self, D_USED)),
        (unsigned long long)shm_load64(AT(self, D_BUMP)),
        (unsigned long long)shm_load64(AT(self, D_DIRTY)),
        (unsigned long long)shm_load64(AT(self, D_DEATHS)),
        (unsigned long long)__atomic_load_n((uint32_t *)RT(self, D_WAITERS), __ATOMIC_ACQUIRE),
        (unsigned long long)shm_load64(AT(self, D_COMPACTIONS)),
        (unsigned long long)shm_load64(AT(self, D_DROPPED)));
}

static PyObject *
Dict_get_retries(DictObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->retries);
}

static int
Dict_traverse(DictObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->encode);
    Py_VISIT(self->decode);
    return 0;
}

static int
Dict_clear_refs(DictObject *self)
{
    Py_CLEAR(self->encode);
    Py_CLEAR(self->decode);
    return 0;
}

static void
Dict_dealloc(DictObject *self)
{
    PyObject_GC_UnTrack(self);
    self->v.inflight = 0;
    self->r.inflight = 0;
    shm_view_close(&self->v);
    shm_view_close(&self->r);
    Py_CLEAR(self->name);
    Dict_clear_refs(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMappingMethods Dict_as_mapping = {
    .mp_length = (lenfunc)Dict_length,
    .mp_subscript = (binaryfunc)Dict_subscript,
    .mp_ass_subscript = (objobjargproc)Dict_ass_subscript,
};

static PySequenceMethods Dict_as_sequence = {
    .sq_contains = (objobjproc)Dict_contains,
};

static PyMethodDef Dict_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Dict_get, METH_FASTCALL,
     "get(key, default=None): the value, or default if the key is absent."},
    {"_c_attach", (PyCFunction)Dict_attach, METH_VARARGS, "attach to the mapping"},
    {"_c_detach", (PyCFunction)Dict_detach, METH_NOARGS, "stop using the mapping"},
    {"_c_retarget", (PyCFunction)Dict_retarget, METH_VARARGS, "use another table (generation)"},
    {"_c_grow", (PyCFunction)Dict_grow, METH_VARARGS, "copy into the next generation, publish it"},
    {"_c_gen", (PyCFunction)Dict_gen, METH_NOARGS, "the root's current generation"},
    {"_c_read", (PyCFunction)(void (*)(void))Dict_read, METH_FASTCALL,
     "_c_read(key, tries) -> (version, bytes) | None | False"},
    {"_c_write", (PyCFunction)(void (*)(void))Dict_write, METH_FASTCALL,
     "_c_write(op, key, data, expect, wait) -> result | BUSY"},
    {"_c_scan", (PyCFunction)(void (*)(void))Dict_scan, METH_FASTCALL,
     "_c_scan(mode) -> list | False"},
    {"_c_verify", (PyCFunction)Dict_verify, METH_O, "_c_verify(wait) -> [problem] | BUSY"},
    {"_c_wait", (PyCFunction)(void (*)(void))Dict_wait, METH_FASTCALL,
     "_c_wait(expected, seconds) -> bool"},
    {"_c_counters", (PyCFunction)Dict_counters, METH_NOARGS, "control words"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Dict_getset[] = {
    {"_c_retries", (getter)Dict_get_retries, NULL, "reads retried by this handle", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DictType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkit._core._dict.DictBase",
    .tp_doc = "Base of shmkit.SharedDict: the hash table's reads and writes as single C calls.",
    .tp_basicsize = sizeof(DictObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Dict_dealloc,
    .tp_traverse = (traverseproc)Dict_traverse,
    .tp_clear = (inquiry)Dict_clear_refs,
    .tp_methods = Dict_methods,
    .tp_getset = Dict_getset,
    .tp_as_mapping = &Dict_as_mapping,
    .tp_as_sequence = &Dict_as_sequence,
};

/* ------------------------------------------------------------------ module */

static PyObject *
dict_hash_key(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "hash_key(key, seed)");
        return NULL;
    }
    unsigned long long seed = PyLong_AsUnsignedLongLongMask(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    const char *p;
    Py_ssize_t n;
    uint32_t flag = 0;
    if (PyUnicode_Check(args[0])) {
        p = PyUnicode_AsUTF8AndSize(args[0], &n);
        if (p == NULL) {
            return NULL;
        }
        flag = KSTR;
    }
    else if (PyBytes_Check(args[0])) {
        p = PyBytes_AS_STRING(args[0]);
        n = PyBytes_GET_SIZE(args[0]);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "key must be str or bytes");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(dk_hash(p, (size_t)n, flag, seed));
}

static PyObject *
dict_reload(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    shm_crash_load();
    Py_RETURN_NONE;
}

static PyMethodDef dict_methods[] = {
    {"hash_key", (PyCFunction)(void (*)(void))dict_hash_key, METH_FASTCALL,
     "hash_key(key, seed) -> the table's 64-bit hash of a str or bytes key"},
    {"reload_test_points", dict_reload, METH_NOARGS, "re-read SHMKIT_CRASH_AT/_AFTER (tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef dict_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmkit._core._dict",
    .m_doc = "SharedDict's hash table: lock-free reads, writes as one critical section.",
    .m_size = -1,
    .m_methods = dict_methods,
};

PyMODINIT_FUNC
PyInit__dict(void)
{
    if (shm_errors_load(&E)) {
        return NULL;
    }
    PyObject *errors = PyImport_ImportModule("shmkit.errors");
    if (errors == NULL) {
        return NULL;
    }
    Full = PyObject_GetAttrString(errors, "Full");
    MessageTooLarge = PyObject_GetAttrString(errors, "MessageTooLarge");
    Py_DECREF(errors);
    if (Full == NULL || MessageTooLarge == NULL) {
        return NULL;
    }
    BusySentinel = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    MovedSentinel = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    NeedGrowth = PyErr_NewExceptionWithDoc(
        "shmkit._core._dict.NeedGrowth",
        "Internal: the table is full and the dict grows; args[0] = bytes the entry needs.", Full,
        NULL);
    if (BusySentinel == NULL || MovedSentinel == NULL || NeedGrowth == NULL) {
        return NULL;
    }
    shm_crash_load();
    if (PyType_Ready(&DictType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&dict_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "DictBase", (PyObject *)&DictType) < 0 ||
        PyModule_AddObjectRef(m, "BUSY", BusySentinel) < 0 ||
        PyModule_AddObjectRef(m, "MOVED", MovedSentinel) < 0 ||
        PyModule_AddObjectRef(m, "NeedGrowth", NeedGrowth) < 0 ||
        PyModule_AddIntConstant(m, "OP_SET", OP_SET) < 0 ||
        PyModule_AddIntConstant(m, "OP_POP", OP_POP) < 0 ||
        PyModule_AddIntConstant(m, "OP_SETDEFAULT", OP_SETDEFAULT) < 0 ||
        PyModule_AddIntConstant(m, "OP_CAS", OP_CAS) < 0 ||
        PyModule_AddIntConstant(m, "OP_CLEAR", OP_CLEAR) < 0 ||
        PyModule_AddIntConstant(m, "OP_POPITEM", OP_POPITEM) < 0 ||
        PyModule_AddIntConstant(m, "OP_REPAIR", OP_REPAIR) < 0 ||
        PyModule_AddIntConstant(m, "OP_COMPACT", OP_COMPACT) < 0 ||
        PyModule_AddIntConstant(m, "OP_UPDATE", OP_UPDATE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
