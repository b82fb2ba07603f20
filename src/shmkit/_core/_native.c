/* shmkit._core._native — primitives over shared memory, and the Lock.
 *
 *   Region      a pinned view of a mapping: bounds-checked 32/64-bit atomic
 *               load-acquire, store-release, compare-and-swap, fetch-add;
 *               futex wait/wake; copies in and out.
 *   Mutex       a robust process-shared pthread mutex in a Region: try,
 *               timed acquire (GIL released, Ctrl-C noticed), release that
 *               raises NotOwner for a thread that does not hold it, and a
 *               context manager whose __enter__/__exit__ are C, so no Python
 *               code runs between taking the mutex and the block that frees it.
 *   LockCore    the whole of Lock.acquire/release: mutex + owner record, one
 *               C call each (base class of shmkit.sync.Lock).
 *   fence()     a full memory barrier.
 *
 * See shm.h for the rules every function here follows.
 */
#include "shm.h"

#include <math.h>
#include <structmember.h>
#include <sys/file.h>

/* This process's pid and this thread's id, cached: getpid() and gettid() are
 * system calls, and the Lock's fast path needs both. A fork bumps the
 * generation (pthread_atfork), so a child never uses its parent's ids. */
static volatile long fork_gen = 1;
static __thread long t_gen;
static __thread long t_pid;
static __thread long t_tid;

static void
after_fork_child(void)
{
    fork_gen++;
}

static inline void
ids_refresh(void)
{
    if (__builtin_expect(t_gen != fork_gen, 0)) {
        t_pid = (long)getpid();
#if defined(__linux__)
        t_tid = (long)syscall(SYS_gettid);
#else
        uint64_t tid = 0;
        pthread_threadid_np(NULL, &tid);
        t_tid = (long)tid;
#endif
        t_gen = fork_gen;
    }
}

static inline long
shm_gettid(void)
{
    ids_refresh();
    return t_tid;
}

static inline long
shm_getpid(void)
{
    ids_refresh();
    return t_pid;
}

static shm_errors E;
static PyObject *LockNotRecoverable;

/* Default spin before sleeping: bounded pause-loops on trylock (a few µs). */
#define SPIN_TRIES 64
/* Sleep slices: Ctrl-C, a closed handle and the deadline are noticed this often. */
#define SLICE 0.05

/* ---------------------------------------------------------------- timeouts */

#define parse_timeout shm_parse_timeout

/* ================================================================ Region */

typedef struct {
    PyObject_HEAD
    shm_view v;
} RegionObject;

static int
Region_init(RegionObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *obj;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Region", kwlist, &obj)) {
        return -1;
    }
    if (self->v.have_buf) {
        PyErr_SetString(PyExc_RuntimeError, "Region is already initialised");
        return -1;
    }
    return shm_view_init(&self->v, obj);
}

static void
Region_dealloc(RegionObject *self)
{
    /* A waiter holds a reference, so inflight is 0 here. */
    self->v.inflight = 0;
    shm_view_close(&self->v);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define REGION_AT(self, off, n, align)                        \
    do {                                                      \
        if (shm_check(&E, &(self)->v, (off), (n), (align))) { \
            return NULL;                                      \
        }                                                     \
    } while (0)

/* Parse (offset, v1[, v2]) for a `width`-byte word and return its address, or
 * NULL with an exception set: wrong arity, a value that does not fit the
 * word (deltas may be negative: they wrap), or an offset outside the mapping
 * or not `width`-aligned. */
static char *
word_args(RegionObject *self, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t nvals,
          int width, int signed_vals, uint64_t *vals, const char *usage)
{
    if (nargs != 1 + nvals) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    long long off = PyLong_AsLongLong(args[0]);
    if (off == -1 && PyErr_Occurred()) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nvals; i++) {
        if (signed_vals) {
            long long d = PyLong_AsLongLong(args[1 + i]);
            if (d == -1 && PyErr_Occurred()) {
                return NULL;
            }
            vals[i] = (uint64_t)d;
            continue;
        }
        unsigned long long x = PyLong_AsUnsignedLongLong(args[1 + i]);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) {
            return NULL;
        }
        if (width == 4 && x > UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "value does not fit in 32 bits");
            return NULL;
        }
        vals[i] = (uint64_t)x;
    }
    if (shm_check(&E, &self->v, off, width, width)) {
        return NULL;
    }
    return self->v.base + off;
}

/* acquire: pairs with the release in store32/cas32/add32 of the writer */
static PyObject *
Region_load32(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    char *p = word_args(self, args, nargs, 0, 4, 0, NULL, "load32(offset)");
    return p ? PyLong_FromUnsignedLong(shm_load32(p)) : NULL;
}

/* acquire: pairs with the release in store64/cas64/add64 of the writer */
static PyObject *
Region_load64(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    char *p = word_args(self, args, nargs, 0, 8, 0, NULL, "load64(offset)");
    return p ? PyLong_FromUnsignedLongLong(shm_load64(p)) : NULL;
}

/* release: everything stored before is visible to whoever load32s this */
static PyObject *
Region_store32(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v[1];
    char *p = word_args(self, args, nargs, 1, 4, 0, v, "store32(offset, value)");
    if (p == NULL) {
        return NULL;
    }
    shm_store32(p, (uint32_t)v[0]);
    Py_RETURN_NONE;
}

/* release: everything stored before is visible to whoever load64s this */
static PyObject *
Region_store64(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v[1];
    char *p = word_args(self, args, nargs, 1, 8, 0, v, "store64(offset, value)");
    if (p == NULL) {
        return NULL;
    }
    shm_store64(p, v[0]);
    Py_RETURN_NONE;
}

/* acq_rel: a successful swap both publishes and observes */
static PyObject *
Region_cas32(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v[2];
    char *p = word_args(self, args, nargs, 2, 4, 0, v, "cas32(offset, expected, new)");
    if (p == NULL) {
        return NULL;
    }
    uint32_t e = (uint32_t)v[0];
    return PyBool_FromLong(__atomic_compare_exchange_n(
        (uint32_t *)p, &e, (uint32_t)v[1], 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
}

/* acq_rel: a successful swap both publishes and observes */
static PyObject *
Region_cas64(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v[2];
    char *p = word_args(self, args, nargs, 2, 8, 0, v, "cas64(offset, expected, new)");
    if (p == NULL) {
        return NULL;
    }
    uint64_t e = v[0];
    return PyBool_FromLong(__atomic_compare_exchange_n((uint64_t *)p, &e, v[1], 0,
                                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
}

/* acq_rel, wrapping mod 2**32; returns the old value */
static PyObject *
Region_add32(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v[1];
    char *p = word_args(self, args, nargs, 1, 4, 1, v, "add32(offset, delta)");
    if (p == NULL) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(
        __atomic_fetch_add((uint32_t *)p, (uint32_t)v[0], __ATOMIC_ACQ_REL));
}

/* acq_rel, wrapping mod 2**64; returns the old value */
static PyObject *
Region_add64(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v[1];
    char *p = word_args(self, args, nargs, 1, 8, 1, v, "add64(offset, delta)");
    if (p == NULL) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(__atomic_fetch_add((uint64_t *)p, v[0], __ATOMIC_ACQ_REL));
}

/* futex_wait(offset, expected, timeout) -> bool: False only on timeout. */
static PyObject *
Region_futex_wait(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "futex_wait(offset, expected, timeout)");
        return NULL;
    }
    long long off = PyLong_AsLongLong(args[0]);
    unsigned long long expected = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    double timeout;
    if (parse_timeout(args[2], &timeout)) {
        return NULL;
    }
    if (expected > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit in 32 bits");
        return NULL;
    }
    REGION_AT(self, off, 4, 4);
    uint32_t *word = (uint32_t *)(self->v.base + off);
    double deadline = timeout < 0 ? INFINITY : shm_monotonic() + timeout;
    int timed_out = 0;
    self->v.inflight++;
    for (;;) {
        double left = deadline - shm_monotonic();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        double slice = left < SLICE ? left : SLICE;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = shm_futex_wait(word, (uint32_t)expected, slice);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            break; /* woken, changed or interrupted: the caller re-checks */
        }
        if (PyErr_CheckSignals() < 0) {
            shm_view_leave(&self->v);
            return NULL;
        }
        if (self->v.closed) {
            break;
        }
    }
    shm_view_leave(&self->v);
    if (PyErr_CheckSignals() < 0) {
        return NULL;
    }
    return PyBool_FromLong(!timed_out);
}

/* futex_wake(offset, n=all) -> number woken (0 where there is no futex) */
static PyObject *
Region_futex_wake(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "futex_wake(offset, n=all)");
        return NULL;
    }
    long long off = PyLong_AsLongLong(args[0]);
    long n = nargs == 2 ? PyLong_AsLong(args[1]) : INT_MAX;
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (n < 1 || n > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "n must be between 1 and 2**31 - 1");
        return NULL;
    }
    REGION_AT(self, off, 4, 4);
    return PyLong_FromLong(shm_futex_wake((uint32_t *)(self->v.base + off), (int)n));
}

/* copy_in(offset, data): copy a bytes-like object into the region. */
static PyObject *
Region_copy_in(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "copy_in(offset, data)");
        return NULL;
    }
    long long off = PyLong_AsLongLong(args[0]);
    if (off == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(args[1], &src, PyBUF_CONTIG_RO) < 0) {
        return NULL;
    }
    if (shm_check(&E, &self->v, off, src.len, 1)) {
        PyBuffer_Release(&src);
        return NULL;
    }
    char *dst = self->v.base + off;
    if (src.len >= (1 << 16)) {
        self->v.inflight++;
        Py_BEGIN_ALLOW_THREADS
        shm_copy(dst, src.buf, (size_t)src.len);
        Py_END_ALLOW_THREADS
        shm_view_leave(&self->v);
    }
    else {
        shm_copy(dst, src.buf, (size_t)src.len);
    }
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
}

/* copy_out(offset, n) -> bytes */
static PyObject *
Region_copy_out(RegionObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "copy_out(offset, n)");
        return NULL;
    }
    long long off = PyLong_AsLongLong(args[0]);
    long long n = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    REGION_AT(self, off, n, 1);
    return PyBytes_FromStringAndSize(self->v.base + off, (Py_ssize_t)n);
}

static PyObject *
Region_close(RegionObject *self, PyObject *Py_UNUSED(ignored))
{
    shm_view_close(&self->v);
    Py_RETURN_NONE;
}

static PyObject *
Region_get_closed(RegionObject *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->v.closed || !self->v.have_buf);
}

static PyObject *
Region_get_size(RegionObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->v.len);
}

static PyMethodDef Region_methods[] = {
    {"load32", (PyCFunction)(void (*)(void))Region_load32, METH_FASTCALL,
     "load32(offset) -> int (acquire)"},
    {"load64", (PyCFunction)(void (*)(void))Region_load64, METH_FASTCALL,
     "load64(offset) -> int (acquire)"},
    {"store32", (PyCFunction)(void (*)(void))Region_store32, METH_FASTCALL,
     "store32(offset, value) (release)"},
    {"store64", (PyCFunction)(void (*)(void))Region_store64, METH_FASTCALL,
     "store64(offset, value) (release)"},
    {"cas32", (PyCFunction)(void (*)(void))Region_cas32, METH_FASTCALL,
     "cas32(offset, expected, new) -> bool"},
    {"cas64", (PyCFunction)(void (*)(void))Region_cas64, METH_FASTCALL,
     "cas64(offset, expected, new) -> bool"},
    {"add32", (PyCFunction)(void (*)(void))Region_add32, METH_FASTCALL,
     "add32(offset, delta) -> old value"},
    {"add64", (PyCFunction)(void (*)(void))Region_add64, METH_FASTCALL,
     "add64(offset, delta) -> old value"},
    {"futex_wait", (PyCFunction)(void (*)(void))Region_futex_wait, METH_FASTCALL,
     "futex_wait(offset, expected, timeout) -> False on timeout"},
    {"futex_wake", (PyCFunction)(void (*)(void))Region_futex_wake, METH_FASTCALL,
     "futex_wake(offset, n=all) -> woken"},
    {"copy_in", (PyCFunction)(void (*)(void))Region_copy_in, METH_FASTCALL,
     "copy_in(offset, data)"},
    {"copy_out", (PyCFunction)(void (*)(void))Region_copy_out, METH_FASTCALL,
     "copy_out(offset, n) -> bytes"},
    {"close", (PyCFunction)Region_close, METH_NOARGS, "release the mapping"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Region_getset[] = {
    {"closed", (getter)Region_get_closed, NULL, "True once closed", NULL},
    {"size", (getter)Region_get_size, NULL, "bytes in the mapping", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkit._core._native.Region",
    .tp_doc = "Region(mmap): bounds-checked atomics, futex and copies on a shared mapping.",
    .tp_basicsize = sizeof(RegionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Region_init,
    .tp_dealloc = (destructor)Region_dealloc,
    .tp_methods = Region_methods,
    .tp_getset = Region_getset,
};

/* ================================================================ ownership */

/* Who owns a mutex through a handle: this process's pid and the thread id. */
typedef struct {
    long pid;
    long tid;
} owner_t;

static inline owner_t
me_now(void)
{
    ids_refresh();
    owner_t o = {t_pid, t_tid};
    return o;
}

/* One lock primitive, two backends: the robust pthread mutex in the segment,
 * or (macOS, SHMKIT_MUTEX=flock) flock on a lock file plus a process-local
 * mutex, because flock on one open file description does not exclude the
 * threads that share it. */
typedef struct {
    pthread_mutex_t *m; /* pthread backend: in the mapping */
    int fd;             /* flock backend: the lock file (owned by Python) */
    pthread_mutex_t local;
    int have_local;
} own_t;

/* OK/BUSY/OWNER_DIED or -errno; never blocks. */
static int
own_try(own_t *o)
{
    if (o->m != NULL) {
        return shm_mutex_trylock(o->m);
    }
    int rc = pthread_mutex_trylock(&o->local);
    if (rc == EBUSY) {
        return SHM_BUSY;
    }
    if (rc) {
        return -rc;
    }
    if (flock(o->fd, LOCK_EX | LOCK_NB) == 0) {
        return SHM_OK;
    }
    int err = errno;
    pthread_mutex_unlock(&o->local);
    return err == EWOULDBLOCK ? SHM_BUSY : -err;
}

/* Block up to `seconds`; call without the GIL. */
static int
own_timed(own_t *o, double seconds)
{
    if (o->m != NULL) {
        return shm_mutex_timedlock(o->m, seconds);
    }
    double end = shm_monotonic() + seconds;
    long nap_ns = 50000;
    for (;;) {
        int got = own_try(o);
        if (got != SHM_BUSY || shm_monotonic() >= end) {
            return got;
        }
        struct timespec ts = {0, nap_ns};
        nanosleep(&ts, NULL);
        nap_ns = nap_ns * 2 > 5000000 ? 5000000 : nap_ns * 2;
    }
}

static int
own_unlock(own_t *o)
{
    if (o->m != NULL) {
        return pthread_mutex_unlock(o->m);
    }
    int rc = flock(o->fd, LOCK_UN) ? errno : 0;
    pthread_mutex_unlock(&o->local);
    return rc;
}

/* Set up an own_t: the robust mutex at `m` (pthread backend), or, with a lock
 * file `fd` >= 0, flock plus a process-local mutex. 0, or -1 with an error set. */
static int
own_setup(own_t *o, char *m, int fd)
{
    if (o->have_local) {
        pthread_mutex_destroy(&o->local);
    }
    memset(o, 0, sizeof(*o));
    o->fd = -1;
    if (fd < 0) {
#if SHM_HAVE_ROBUST
        o->m = (pthread_mutex_t *)m;
        return 0;
#else
        (void)m;
        PyErr_SetString(E.layout_error, "robust pthread mutexes are not available here");
        return -1;
#endif
    }
    int rc = pthread_mutex_init(&o->local, NULL);
    if (rc) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    o->fd = fd;
    o->have_local = 1;
    return 0;
}

/* After fork: the child's process-local mutex starts free, on a new lock file fd. */
static void
own_after_fork(own_t *o, int fd)
{
    if (o->have_local) {
        pthread_mutex_destroy(&o->local);
        pthread_mutex_init(&o->local, NULL);
        o->fd = fd;
    }
}

static void
own_free(own_t *o)
{
    if (o->have_local) {
        pthread_mutex_destroy(&o->local);
        o->have_local = 0;
    }
}

/* Spin, then sleep in slices until got or the deadline (timeout < 0: never).
 * Returns OK/OWNER_DIED/BUSY (timed out), -errno, or -1000 with a Python
 * exception set (a signal handler raised, or the view was closed). Holding
 * nothing on BUSY and on -1000. */
#define GOT_PYERR (-1000)

static int
own_acquire(own_t *o, shm_view *v, double timeout, int spins)
{
    int got = own_try(o);
    if (got != SHM_BUSY || timeout == 0) {
        return got;
    }
    if (o->m != NULL && spins > 0) {
        got = shm_mutex_spin(o->m, spins, 16);
        if (got != SHM_BUSY) {
            return got;
        }
    }
    double deadline = timeout < 0 ? INFINITY : shm_monotonic() + timeout;
    v->inflight++;
    for (;;) {
        double left = deadline - shm_monotonic();
        if (left <= 0) {
            got = SHM_BUSY;
            break;
        }
        double slice = left < SLICE ? left : SLICE;
        Py_BEGIN_ALLOW_THREADS
        got = own_timed(o, slice);
        Py_END_ALLOW_THREADS
        if (got != SHM_BUSY) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            got = GOT_PYERR;
            break;
        }
        if (v->closed) {
            PyErr_SetString(E.closed, "the handle was closed while waiting for its lock");
            got = GOT_PYERR;
            break;
        }
    }
    if ((got == SHM_OK || got == SHM_OWNER_DIED) && v->closed) {
        /* closed while we waited: give it back rather than hold a lock the
         * handle can no longer release (the memory is still mapped: inflight) */
        own_unlock(o);
        PyErr_SetString(E.closed, "the handle was closed while waiting for its lock");
        got = GOT_PYERR;
    }
    shm_view_leave(v);
    return got;
}

/* ================================================================ Mutex */

typedef struct {
    PyObject_HEAD
    RegionObject *region;
    own_t own;
    owner_t holder; /* who took it through this object; pid 0 = not held */
    long long offset;
} MutexObject;

static PyTypeObject MutexType;

static int
Mutex_init(MutexObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *region;
    long long offset;
    int fd = -1;
    static char *kwlist[] = {"region", "offset", "flock_fd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!L|i:Mutex", kwlist, &RegionType, &region,
                                     &offset, &fd)) {
        return -1;
    }
    RegionObject *r = (RegionObject *)region;
    if (shm_check(&E, &r->v, offset, SHM_MUTEX_AREA, 64)) {
        return -1;
    }
    Py_XSETREF(self->region, (RegionObject *)Py_NewRef(region));
    self->offset = offset;
    return own_setup(&self->own, r->v.base + offset, fd);
}

static void
Mutex_dealloc(MutexObject *self)
{
    own_free(&self->own);
    Py_XDECREF(self->region);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
mutex_ready(MutexObject *self)
{
    if (self->region == NULL || self->region->v.closed) {
        PyErr_SetString(E.closed, "the mutex's handle is closed");
        return -1;
    }
    return 0;
}

static PyObject *
mutex_result(MutexObject *self, int got)
{
    if (got == GOT_PYERR) {
        return NULL;
    }
    if (got < 0) {
        return shm_mutex_error(&E, got);
    }
    if (got != SHM_BUSY) {
        self->holder = me_now();
    }
    return PyLong_FromLong(got);
}

static PyObject *
Mutex_try_acquire(MutexObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mutex_ready(self)) {
        return NULL;
    }
    return mutex_result(self, own_try(&self->own));
}

/* acquire(timeout=None, spin=True) -> OK, OWNER_DIED, or BUSY on timeout */
static PyObject *
Mutex_acquire(MutexObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *tobj = Py_None;
    int spin = 1;
    static char *kwlist[] = {"timeout", "spin", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Op:acquire", kwlist, &tobj, &spin)) {
        return NULL;
    }
    double timeout;
    if (parse_timeout(tobj, &timeout) || mutex_ready(self)) {
        return NULL;
    }
    return mutex_result(self,
                        own_acquire(&self->own, &self->region->v, timeout, spin ? SPIN_TRIES : 0));
}

static int
mutex_release(MutexObject *self)
{
    if (mutex_ready(self)) {
        return -1;
    }
    owner_t me = me_now();
    /* A robust pthread mutex checks its owner itself (EPERM below); the flock
     * backend relies on our record of who took it. */
    if (self->own.m == NULL && (self->holder.pid != me.pid || self->holder.tid != me.tid)) {
        PyErr_SetString(E.not_owner, "this thread does not hold the mutex");
        return -1;
    }
    int rc = own_unlock(&self->own);
    if (rc == EPERM) {
        PyErr_SetString(E.not_owner, "this thread does not hold the mutex");
        return -1;
    }
    self->holder.pid = 0;
    self->holder.tid = 0;
    if (rc) {
        shm_mutex_error(&E, -rc);
        return -1;
    }
    return 0;
}

static PyObject *
Mutex_release(MutexObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->region == NULL) {
        PyErr_SetString(E.closed, "the mutex's handle is closed");
        return NULL;
    }
    if (mutex_release(self)) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* release_if_held() -> bool: release if this thread took it through us. */
static PyObject *
Mutex_release_if_held(MutexObject *self, PyObject *Py_UNUSED(ignored))
{
    owner_t me = me_now();
    if (self->region == NULL || self->holder.pid != me.pid || self->holder.tid != me.tid) {
        Py_RETURN_FALSE;
    }
    if (mutex_release(self)) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
Mutex_enter(MutexObject *self, PyObject *Py_UNUSED(ignored))
{
    if (mutex_ready(self)) {
        return NULL;
    }
    return mutex_result(self, own_acquire(&self->own, &self->region->v, -1.0, SPIN_TRIES));
}

static PyObject *
Mutex_exit(MutexObject *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    if (mutex_release(self)) {
        return NULL;
    }
    Py_RETURN_FALSE;
}

static PyObject *
Mutex_get_held(MutexObject *self, void *Py_UNUSED(c))
{
    owner_t me = me_now();
    return PyBool_FromLong(self->holder.pid == me.pid && self->holder.tid == me.tid);
}

/* Mutex.init(region, offset): make a robust process-shared mutex (creator). */
static PyObject *
Mutex_initialize(PyObject *Py_UNUSED(cls), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyObject_TypeCheck(args[0], &RegionType)) {
        PyErr_SetString(PyExc_TypeError, "init(region, offset)");
        return NULL;
    }
    RegionObject *r = (RegionObject *)args[0];
    long long off = PyLong_AsLongLong(args[1]);
    if (off == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (shm_check(&E, &r->v, off, SHM_MUTEX_AREA, 64)) {
        return NULL;
    }
    int rc = shm_mutex_init((pthread_mutex_t *)(r->v.base + off));
    if (rc) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* After fork: the child holds nothing through an inherited handle. */
static PyObject *
Mutex_forget(MutexObject *self, PyObject *Py_UNUSED(ignored))
{
    self->holder.pid = 0;
    self->holder.tid = 0;
    own_after_fork(&self->own, self->own.fd);
    Py_RETURN_NONE;
}

static PyObject *
Mutex_set_fd(MutexObject *self, PyObject *arg)
{
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    self->own.fd = fd;
    Py_RETURN_NONE;
}

static PyMethodDef Mutex_methods[] = {
    {"try_acquire", (PyCFunction)Mutex_try_acquire, METH_NOARGS,
     "try_acquire() -> OK, BUSY or OWNER_DIED (then held and made consistent)"},
    {"acquire", (PyCFunction)(void (*)(void))Mutex_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(timeout=None, spin=True) -> OK, OWNER_DIED, or BUSY on timeout"},
    {"release", (PyCFunction)Mutex_release, METH_NOARGS,
     "release(); NotOwner if this thread does not hold it"},
    {"release_if_held", (PyCFunction)Mutex_release_if_held, METH_NOARGS,
     "release if this thread holds it through this object -> bool"},
    {"forget", (PyCFunction)Mutex_forget, METH_NOARGS, "after fork: hold nothing"},
    {"set_fd", (PyCFunction)Mutex_set_fd, METH_O, "flock backend: the lock file's fd"},
    {"__enter__", (PyCFunction)Mutex_enter, METH_NOARGS, "acquire (waits forever)"},
    {"__exit__", (PyCFunction)(void (*)(void))Mutex_exit, METH_FASTCALL, "release"},
    {"init", (PyCFunction)(void (*)(void))Mutex_initialize, METH_FASTCALL | METH_STATIC,
     "init(region, offset): initialise a robust process-shared mutex"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Mutex_getset[] = {
    {"held", (getter)Mutex_get_held, NULL, "True while this thread holds it through us", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MutexType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkit._core._native.Mutex",
    .tp_doc = "Mutex(region, offset, flock_fd=-1): a robust process-shared mutex.",
    .tp_basicsize = sizeof(MutexObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Mutex_init,
    .tp_dealloc = (destructor)Mutex_dealloc,
    .tp_methods = Mutex_methods,
    .tp_getset = Mutex_getset,
};

/* ================================================================ LockCore */

/* The owner record after the mutex (sync.Lock), little-endian int64 words:
 *   0 state   FREE 0 | HELD 1 | POISONED 2   (release store, written last)
 *   8 pid     the holder's pid                (written before state)
 *  16 start   its start time in clock ticks
 *  24 since   wall-clock ns when it took the lock
 *  32 deaths  holders that died holding it
 *  40 tid     the holder's thread id
 * A reader loads state with acquire, then the fields: when it sees HELD, the
 * fields are those of that holder or a later one, never zero (pid is never
 * cleared). */
#define REC_STATE 0
#define REC_PID 8
#define REC_START 16
#define REC_SINCE 24
#define REC_DEATHS 32
#define REC_TID 40
#define REC_SIZE 48
#define ST_FREE 0
#define ST_HELD 1
#define ST_POISONED 2

/* acquire results beyond OK/BUSY/OWNER_DIED */
#define LK_POISONED 3

typedef struct {
    PyObject_HEAD
    PyObject *core_region;
    own_t own;
    char *rec;
    long long my_pid;
    long long my_start;
    int detached;
    owner_t holder; /* the thread that took it through this handle; pid 0 = none */
    char owner_died; /* Lock.owner_died */
} LockCoreObject;

static int
LockCore_tp_init(LockCoreObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    (void)args;
    (void)kwds;
    return 0;
}

static void
LockCore_dealloc(LockCoreObject *self)
{
    own_free(&self->own);
    Py_XDECREF(self->core_region);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _core_attach(region, mutex_offset, record_offset, flock_fd=-1) */
static PyObject *
LockCore_attach(LockCoreObject *self, PyObject *args)
{
    PyObject *region;
    long long moff, roff;
    int fd = -1;
    if (!PyArg_ParseTuple(args, "O!LL|i:_core_attach", &RegionType, &region, &moff, &roff,
                          &fd)) {
        return NULL;
    }
    RegionObject *r = (RegionObject *)region;
    if (shm_check(&E, &r->v, moff, SHM_MUTEX_AREA, 64) || shm_check(&E, &r->v, roff, REC_SIZE, 8)) {
        return NULL;
    }
    if (own_setup(&self->own, r->v.base + moff, fd)) {
        return NULL;
    }
    self->rec = r->v.base + roff;
    Py_XSETREF(self->core_region, Py_NewRef(region));
    self->my_pid = 0;
    self->detached = 0;
    Py_RETURN_NONE;
}

static int
lock_ready(LockCoreObject *self)
{
    RegionObject *r = (RegionObject *)self->core_region;
    if (r == NULL || r->v.closed || self->detached) {
        PyErr_SetString(E.closed, "the lock's handle is closed");
        return -1;
    }
    return 0;
}

/* This process's (pid, start time), refreshed after fork through
 * shmkit._process.current() (reading /proc is Python's job). */
static int
lock_identity(LockCoreObject *self)
{
    long long pid = (long long)shm_getpid();
    if (self->my_pid == pid) {
        return 0;
    }
    PyObject *mod = PyImport_ImportModule("shmkit._process");
    if (mod == NULL) {
        return -1;
    }
    PyObject *me = PyObject_CallMethod(mod, "current", NULL);
    Py_DECREF(mod);
    if (me == NULL) {
        return -1;
    }
    PyObject *start = PyObject_GetAttrString(me, "start");
    Py_DECREF(me);
    if (start == NULL) {
        return -1;
    }
    self->my_start = PyLong_AsLongLong(start);
    Py_DECREF(start);
    if (PyErr_Occurred()) {
        return -1;
    }
    self->my_pid = pid;
    return 0;
}

/* When the lock was taken, for "held for N s" only: the coarse clock (a few
 * ms resolution) costs a fraction of the precise one. */
static inline int64_t
wall_ns(void)
{
    struct timespec ts;
#ifdef CLOCK_REALTIME_COARSE
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
#else
    clock_gettime(CLOCK_REALTIME, &ts);
#endif
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Take the lock: OK | BUSY (timed out) | OWNER_DIED | POISONED, or GOT_PYERR
 * with an exception set. Takes the mutex and writes the owner record in one
 * call: a signal handler's exception can land only before (nothing held) or
 * after (record written). */
static int
lock_take(LockCoreObject *self, double timeout, int spin)
{
    if (lock_ready(self) || lock_identity(self)) {
        return GOT_PYERR;
    }
    RegionObject *r = (RegionObject *)self->core_region;
    int got = own_acquire(&self->own, &r->v, timeout, spin ? SPIN_TRIES : 0);
    if (got == GOT_PYERR || got == SHM_BUSY) {
        return got;
    }
    if (got < 0) {
        shm_mutex_error(&E, got);
        return GOT_PYERR;
    }
    shm_crash("lock.acquire.locked");
    char *rec = self->rec;
    /* acquire: pairs with the release store of state by the last holder */
    uint64_t state = shm_load64(rec + REC_STATE);
    /* EOWNERDEAD alone (got == OWNER_DIED, record FREE) means the holder died
     * before recording itself or after clearing: nothing it protects changed. */
    int died = 0;
    if (state == ST_POISONED) {
        own_unlock(&self->own);
        return LK_POISONED;
    }
    if (state != ST_FREE) {
        /* HELD under a mutex we now hold: its holder died inside (for the
         * flock backend this is the only sign of a death). */
        died = 1;
        shm_set_relaxed64(rec + REC_DEATHS, shm_relaxed64(rec + REC_DEATHS) + 1);
    }
    owner_t me = me_now();
    shm_set_relaxed64(rec + REC_PID, (uint64_t)me.pid);
    shm_set_relaxed64(rec + REC_START, (uint64_t)self->my_start);
    shm_set_relaxed64(rec + REC_SINCE, (uint64_t)wall_ns());
    shm_set_relaxed64(rec + REC_TID, (uint64_t)me.tid);
    /* release: a reader that sees HELD sees this holder's fields */
    shm_store64(rec + REC_STATE, ST_HELD);
    self->holder = me;
    shm_crash("lock.acquire.recorded");
    return died ? SHM_OWNER_DIED : SHM_OK;
}

/* _core_acquire(timeout, spin) -> OK | BUSY (timed out) | OWNER_DIED | POISONED. */
static PyObject *
LockCore_acquire(LockCoreObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_core_acquire(timeout, spin)");
        return NULL;
    }
    double timeout;
    int spin = PyObject_IsTrue(args[1]);
    if (spin < 0 || parse_timeout(args[0], &timeout)) {
        return NULL;
    }
    int got = lock_take(self, timeout, spin);
    if (got == GOT_PYERR) {
        return NULL;
    }
    return PyLong_FromLong(got);
}

/* _core_release(poison) — NotOwner unless this thread of this process holds it. */
static PyObject *
LockCore_release(LockCoreObject *self, PyObject *arg)
{
    int poison = PyObject_IsTrue(arg);
    if (poison < 0) {
        return NULL;
    }
    if (lock_ready(self)) {
        return NULL;
    }
    char *rec = self->rec;
    owner_t me = me_now();
    if (self->holder.pid != me.pid || self->holder.tid != me.tid ||
        shm_load64(rec + REC_STATE) != ST_HELD ||
        shm_relaxed64(rec + REC_PID) != (uint64_t)me.pid ||
        shm_relaxed64(rec + REC_TID) != (uint64_t)me.tid) {
        PyErr_SetString(E.not_owner,
                        "release() from a thread that does not hold the lock (a Lock is "
                        "owned by the thread that acquired it)");
        return NULL;
    }
    /* release: the protected data's stores happen before FREE is seen */
    shm_store64(rec + REC_STATE, poison ? ST_POISONED : ST_FREE);
    self->holder.pid = 0;
    self->holder.tid = 0;
    shm_crash("lock.release.cleared");
    int rc = own_unlock(&self->own);
    if (rc) {
        return shm_mutex_error(&E, -rc);
    }
    shm_crash("lock.release.unlocked");
    Py_RETURN_NONE;
}

/* _core_record() -> (state, pid, start, since, deaths, tid): a consistent snapshot. */
static PyObject *
LockCore_record(LockCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (lock_ready(self)) {
        return NULL;
    }
    char *rec = self->rec;
    /* acquire: pairs with the release store of HELD in _core_acquire */
    uint64_t state = shm_load64(rec + REC_STATE);
    return Py_BuildValue("(KKKKKK)", (unsigned long long)state,
                         (unsigned long long)shm_relaxed64(rec + REC_PID),
                         (unsigned long long)shm_relaxed64(rec + REC_START),
                         (unsigned long long)shm_relaxed64(rec + REC_SINCE),
                         (unsigned long long)shm_relaxed64(rec + REC_DEATHS),
                         (unsigned long long)shm_relaxed64(rec + REC_TID));
}

/* _core_held() -> bool: this thread holds the lock through this handle. */
static PyObject *
LockCore_held(LockCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->core_region == NULL || ((RegionObject *)self->core_region)->v.closed ||
        self->detached) {
        Py_RETURN_FALSE;
    }
    char *rec = self->rec;
    owner_t me = me_now();
    int held = self->holder.pid == me.pid && self->holder.tid == me.tid &&
               shm_load64(rec + REC_STATE) == ST_HELD &&
               shm_relaxed64(rec + REC_PID) == (uint64_t)me.pid &&
               shm_relaxed64(rec + REC_TID) == (uint64_t)me.tid;
    return PyBool_FromLong(held);
}

/* The region (closed by the caller) stays referenced until dealloc: another
 * thread may still be inside _core_acquire on it. */
static PyObject *
LockCore_detach(LockCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    self->detached = 1;
    Py_RETURN_NONE;
}

static PyObject *
LockCore_after_fork(LockCoreObject *self, PyObject *arg)
{
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    own_after_fork(&self->own, fd);
    self->my_pid = 0;
    self->holder.pid = 0;
    self->holder.tid = 0;
    Py_RETURN_NONE;
}

/* The object's user name for messages (Lock sets self._name). */
static PyObject *
lock_name(LockCoreObject *self)
{
    PyObject *name = PyObject_GetAttrString((PyObject *)self, "_name");
    if (name == NULL) {
        PyErr_Clear();
        name = PyUnicode_FromString("?");
    }
    return name;
}

static int
lock_ready_named(LockCoreObject *self)
{
    RegionObject *r = (RegionObject *)self->core_region;
    if (r == NULL || r->v.closed || self->detached) {
        PyObject *name = lock_name(self);
        PyErr_Format(E.closed, "lock %R is closed", name);
        Py_XDECREF(name);
        return -1;
    }
    return 0;
}

/* acquire(timeout=None, *, spin=True) -> bool, all of it in C: the timeout is
 * checked first, then the mutex is taken and the record written in one call,
 * and nothing after that can raise before returning True. */
static PyObject *
lock_acquire_impl(LockCoreObject *self, double timeout, int spin)
{
    if (lock_ready_named(self)) {
        return NULL;
    }
    owner_t me = me_now();
    if (self->holder.pid == me.pid && self->holder.tid == me.tid) {
        PyObject *name = lock_name(self);
        PyErr_Format(PyExc_RuntimeError, "lock %R is already held by this thread", name);
        Py_XDECREF(name);
        return NULL;
    }
    int got = lock_take(self, timeout, spin);
    if (got == GOT_PYERR) {
        return NULL;
    }
    if (got == SHM_BUSY) {
        Py_RETURN_FALSE;
    }
    if (got == LK_POISONED) {
        PyObject *name = lock_name(self);
        PyErr_Format(LockNotRecoverable,
                     "lock %R is poisoned: a previous holder died and the next one released "
                     "it without mark_consistent(); remove and recreate it",
                     name);
        Py_XDECREF(name);
        return NULL;
    }
    self->owner_died = got == SHM_OWNER_DIED;
    Py_RETURN_TRUE;
}

static PyObject *
LockCore_py_acquire(LockCoreObject *self, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    PyObject *tobj = nargs > 0 ? args[0] : Py_None;
    int spin = 1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "acquire(timeout=None, *, spin=True)");
        return NULL;
    }
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i);
            PyObject *val = args[nargs + i];
            if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0 && nargs == 0) {
                tobj = val;
            }
            else if (PyUnicode_CompareWithASCIIString(key, "spin") == 0) {
                spin = PyObject_IsTrue(val);
                if (spin < 0) {
                    return NULL;
                }
            }
            else {
                PyErr_Format(PyExc_TypeError, "acquire() got an unexpected keyword argument %R",
                             key);
                return NULL;
            }
        }
    }
    double timeout;
    if (parse_timeout(tobj, &timeout)) {
        return NULL;
    }
    return lock_acquire_impl(self, timeout, spin);
}

/* release(): poisons the lock if owner_died was never cleared; NotOwner
 * unless this thread took it through this handle. */
static PyObject *
LockCore_py_release(LockCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (lock_ready_named(self)) {
        return NULL;
    }
    PyObject *res = LockCore_release(self, self->owner_died ? Py_True : Py_False);
    if (res == NULL) {
        return NULL;
    }
    self->owner_died = 0;
    return res;
}

static PyObject *
LockCore_enter(LockCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *res = lock_acquire_impl(self, -1.0, 1);
    if (res == NULL) {
        return NULL;
    }
    Py_DECREF(res);
    return Py_NewRef((PyObject *)self);
}

static PyObject *
LockCore_exit(LockCoreObject *self, PyObject *const *Py_UNUSED(args),
              Py_ssize_t Py_UNUSED(nargs))
{
    PyObject *res = LockCore_py_release(self, NULL);
    if (res == NULL) {
        return NULL;
    }
    Py_DECREF(res);
    Py_RETURN_NONE;
}

static PyMemberDef LockCore_members[] = {
    {"owner_died", T_BOOL, offsetof(LockCoreObject, owner_died), 0,
     "True while this handle holds a lock whose previous holder died inside its critical "
     "section; repair, then mark_consistent()"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef LockCore_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))LockCore_py_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(timeout=None, *, spin=True) -> bool: take the lock within timeout seconds "
     "(None waits forever, 0 tries once); sets owner_died if the last holder died holding it"},
    {"release", (PyCFunction)LockCore_py_release, METH_NOARGS,
     "release(): poisons the lock if owner_died was not cleared; NotOwner unless this "
     "thread holds it"},
    {"__enter__", (PyCFunction)LockCore_enter, METH_NOARGS,
     "with lock: holds the lock for the block (waits forever)"},
    {"__exit__", (PyCFunction)(void (*)(void))LockCore_exit, METH_FASTCALL, "release"},
    {"_core_attach", (PyCFunction)LockCore_attach, METH_VARARGS,
     "_core_attach(region, mutex_offset, record_offset, flock_fd=-1)"},
    {"_core_acquire", (PyCFunction)(void (*)(void))LockCore_acquire, METH_FASTCALL,
     "_core_acquire(timeout, spin) -> OK | BUSY | OWNER_DIED | POISONED"},
    {"_core_release", (PyCFunction)LockCore_release, METH_O, "_core_release(poison)"},
    {"_core_record", (PyCFunction)LockCore_record, METH_NOARGS,
     "_core_record() -> (state, pid, start, since, deaths, tid)"},
    {"_core_held", (PyCFunction)LockCore_held, METH_NOARGS, "this thread holds it"},
    {"_core_detach", (PyCFunction)LockCore_detach, METH_NOARGS, "forget the mapping"},
    {"_core_after_fork", (PyCFunction)LockCore_after_fork, METH_O,
     "_core_after_fork(new_flock_fd)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LockCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "shmkit._core._native.LockCore",
    .tp_doc = "Base of shmkit.sync.Lock: acquire/release as single C calls.",
    .tp_basicsize = sizeof(LockCoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)LockCore_tp_init,
    .tp_dealloc = (destructor)LockCore_dealloc,
    .tp_methods = LockCore_methods,
    .tp_members = LockCore_members,
};

/* ================================================================ module */

static PyObject *
native_fence(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
native_parse_timeout(PyObject *Py_UNUSED(m), PyObject *arg)
{
    double t;
    if (parse_timeout(arg, &t)) {
        return NULL;
    }
    if (t < 0) {
        Py_RETURN_NONE;
    }
    return PyFloat_FromDouble(t);
}

static PyObject *
native_crash_arm(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    shm_crash_load();
    Py_RETURN_NONE;
}

static PyMethodDef native_methods[] = {
    {"fence", native_fence, METH_NOARGS, "fence(): a full memory barrier (seq_cst)"},
    {"check_timeout", native_parse_timeout, METH_O,
     "check_timeout(t) -> float | None: the one timeout contract (None = forever)"},
    {"crash_reload", native_crash_arm, METH_NOARGS,
     "re-read SHMKIT_CRASH_AT / SHMKIT_CRASH_AFTER (tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmkit._core._native",
    .m_doc = "shmkit's native core: atomics, futex, robust mutex and Lock over shared memory.",
    .m_size = -1,
    .m_methods = native_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    if (shm_errors_load(&E)) {
        return NULL;
    }
    PyObject *errors = PyImport_ImportModule("shmkit.errors");
    if (errors == NULL) {
        return NULL;
    }
    LockNotRecoverable = PyObject_GetAttrString(errors, "LockNotRecoverable");
    Py_DECREF(errors);
    if (LockNotRecoverable == NULL) {
        return NULL;
    }
    shm_crash_load();
    if (pthread_atfork(NULL, NULL, after_fork_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    if (PyType_Ready(&RegionType) < 0 || PyType_Ready(&MutexType) < 0 ||
        PyType_Ready(&LockCoreType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Region", (PyObject *)&RegionType) < 0 ||
        PyModule_AddObjectRef(m, "Mutex", (PyObject *)&MutexType) < 0 ||
        PyModule_AddObjectRef(m, "LockCore", (PyObject *)&LockCoreType) < 0 ||
        PyModule_AddIntConstant(m, "OK", SHM_OK) < 0 ||
        PyModule_AddIntConstant(m, "BUSY", SHM_BUSY) < 0 ||
        PyModule_AddIntConstant(m, "OWNER_DIED", SHM_OWNER_DIED) < 0 ||
        PyModule_AddIntConstant(m, "POISONED", LK_POISONED) < 0 ||
        PyModule_AddIntConstant(m, "HAVE_FUTEX", SHM_HAVE_FUTEX) < 0 ||
        PyModule_AddIntConstant(m, "HAVE_ROBUST", SHM_HAVE_ROBUST) < 0 ||
        PyModule_AddIntConstant(m, "HAVE_CLOCKLOCK", SHM_HAVE_CLOCKLOCK) < 0 ||
        PyModule_AddIntConstant(m, "MUTEX_SIZE", (long)sizeof(pthread_mutex_t)) < 0 ||
        PyModule_AddIntConstant(m, "MUTEX_AREA", SHM_MUTEX_AREA) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
