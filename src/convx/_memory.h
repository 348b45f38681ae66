/* A cache of large data buffers for the NumPy arrays convx allocates (a NEP 49 memory handler).
 *
 * An array larger than glibc's mmap threshold gets fresh pages from the kernel and gives them
 * back when it is freed, so a layer that allocates its output anew on every call pays the page
 * faults (and, on a VM, the TLB shootdowns of the unmapping) each time: a MobileNet-style
 * inference at batch 64 took 29-31 ms that way against 15-16.5 ms with the freed memory kept
 * (2-core Xeon, KVM). The handler keeps freed buffers of at least CONVX_CACHE_MIN bytes, up
 * to a limit in all, and hands one back to the next request of exactly its size. It is set
 * only while convx code runs (convx/_memory.py), and an array keeps the handler it was
 * allocated with, so that an array returned to the user and dropped later comes back here.
 * Everything else is plain malloc / calloc / realloc / free, which the cached buffers came
 * from; NumPy itself reports every allocation and free to tracemalloc, cached or not.
 */
#ifndef CONVX_MEMORY_H
#define CONVX_MEMORY_H

#include <Python.h>
#include <pythread.h>
#include <stdlib.h>
#include <string.h>
#include <numpy/arrayobject.h>

/* Smallest buffer kept (smaller ones come from the heap cheaply). */
#define CONVX_CACHE_MIN ((size_t)1 << 18)
/* Buffers kept at most. */
#define CONVX_CACHE_SLOTS 256

typedef struct {
    void *ptr;
    size_t size;
    unsigned long long stamp; /* when it was freed: the oldest goes first */
} convx_cache_slot;

static struct {
    PyThread_type_lock lock;
    convx_cache_slot slot[CONVX_CACHE_SLOTS];
    int used;
    size_t bytes, limit;
    unsigned long long clock, hits, misses;
} convx_cache;

static void *convx_cache_malloc(void *ctx, size_t size) {
    (void)ctx;
    if (size >= CONVX_CACHE_MIN) {
        void *found = NULL;
        PyThread_acquire_lock(convx_cache.lock, WAIT_LOCK);
        int best = -1;
        for (int i = 0; i < convx_cache.used; i++)
            if (convx_cache.slot[i].size == size &&
                (best < 0 || convx_cache.slot[i].stamp > convx_cache.slot[best].stamp))
                best = i;
        if (best >= 0) {
            found = convx_cache.slot[best].ptr;
            convx_cache.bytes -= size;
            convx_cache.slot[best] = convx_cache.slot[--convx_cache.used];
            convx_cache.hits++;
        } else {
            convx_cache.misses++;
        }
        PyThread_release_lock(convx_cache.lock);
        if (found) return found;
    }
    return malloc(size ? size : 1);
}

static void *convx_cache_calloc(void *ctx, size_t n, size_t size) {
    (void)ctx;
    return calloc(n ? n : 1, size ? size : 1);
}

static void *convx_cache_realloc(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    return realloc(ptr, size ? size : 1);
}

/* Frees the oldest cached buffers until `room` more bytes fit under the limit and a slot is
 * free (all of them where room exceeds the limit); the lock is held. */
static void convx_cache_make_room(size_t room) {
    while (convx_cache.used &&
           (convx_cache.used == CONVX_CACHE_SLOTS || convx_cache.bytes + room > convx_cache.limit)) {
        int oldest = 0;
        for (int i = 1; i < convx_cache.used; i++)
            if (convx_cache.slot[i].stamp < convx_cache.slot[oldest].stamp) oldest = i;
        free(convx_cache.slot[oldest].ptr);
        convx_cache.bytes -= convx_cache.slot[oldest].size;
        convx_cache.slot[oldest] = convx_cache.slot[--convx_cache.used];
    }
}

static void convx_cache_free(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    if (ptr && size >= CONVX_CACHE_MIN && size <= convx_cache.limit) {
        PyThread_acquire_lock(convx_cache.lock, WAIT_LOCK);
        if (size <= convx_cache.limit) {
            convx_cache_make_room(size);
            convx_cache.slot[convx_cache.used].ptr = ptr;
            convx_cache.slot[convx_cache.used].size = size;
            convx_cache.slot[convx_cache.used].stamp = ++convx_cache.clock;
            convx_cache.used++;
            convx_cache.bytes += size;
            ptr = NULL;
        }
        PyThread_release_lock(convx_cache.lock);
    }
    free(ptr);
}

static PyDataMem_Handler convx_cache_handler = {
    "convx_cache", 1, {NULL, convx_cache_malloc, convx_cache_calloc, convx_cache_realloc, convx_cache_free}};

/* The handler as NumPy takes it (a new reference), NULL with an exception set on failure. */
static PyObject *convx_cache_capsule(void) {
    if (PyArray_API == NULL && _import_array() < 0) return NULL;
    if (convx_cache.lock == NULL && (convx_cache.lock = PyThread_allocate_lock()) == NULL)
        return PyErr_NoMemory();
    return PyCapsule_New(&convx_cache_handler, "mem_handler", NULL);
}

/* NumPy's PyDataMem_SetHandler: makes handler (NULL: NumPy's default) the current context's,
 * returning the previous one (a new reference). */
static PyObject *convx_set_handler(PyObject *handler) { return PyDataMem_SetHandler(handler); }

/* The limit on the cached bytes; a lower one frees the oldest buffers down to it. */
static void convx_cache_set_limit(size_t limit) {
    PyThread_acquire_lock(convx_cache.lock, WAIT_LOCK);
    convx_cache.limit = limit;
    convx_cache_make_room(0);
    PyThread_release_lock(convx_cache.lock);
}

/* Cached bytes, buffers, hits and misses (requests of a cacheable size) so far. */
static void convx_cache_stats(size_t *bytes, int *buffers, unsigned long long *hits, unsigned long long *misses) {
    PyThread_acquire_lock(convx_cache.lock, WAIT_LOCK);
    *bytes = convx_cache.bytes;
    *buffers = convx_cache.used;
    *hits = convx_cache.hits;
    *misses = convx_cache.misses;
    PyThread_release_lock(convx_cache.lock);
}

#endif
