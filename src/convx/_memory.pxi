# convx's cache of large array buffers (_memory.h): a NumPy memory handler set while convx code
# runs (convx/_memory.py decides where and how much).

cdef extern from "_memory.h":
    object convx_cache_capsule()
    object convx_set_handler(object handler)
    void convx_cache_set_limit(size_t limit) nogil
    void convx_cache_stats(size_t* cached, int* buffers, unsigned long long* hits,
                           unsigned long long* misses) nogil
    size_t CONVX_CACHE_MIN
    int CONVX_CACHE_SLOTS

cdef object _CACHE_HANDLER = convx_cache_capsule()
cdef size_t _cache_limit = 0

MEMORY_CACHE_MIN = CONVX_CACHE_MIN
MEMORY_CACHE_SLOTS = CONVX_CACHE_SLOTS


cdef class CachedMemory:
    """Within the ``with`` block, the arrays NumPy allocates in this thread (context) keep their
    buffers of at least MEMORY_CACHE_MIN bytes in convx's cache when they are freed, whenever
    that is, and take one of exactly their size from it; nothing changes while the limit is 0.
    Each object is entered once. As _Scope, it changes the handler and undoes the change in
    compiled code, and an object dropped while entered (an interrupt between __enter__ and the
    block) undoes it too."""
    cdef object previous
    cdef bint entered

    def __enter__(self):
        if self.entered:
            raise RuntimeError("a CachedMemory is entered once")
        self.entered = True
        if _cache_limit:
            self.previous = convx_set_handler(_CACHE_HANDLER)
        return self

    def __exit__(self, exc_type, exc, tb):
        self._restore()
        return False

    cdef int _restore(self) except -1:
        previous = self.previous
        if previous is not None:
            self.previous = None
            convx_set_handler(previous)
        return 0

    def __dealloc__(self):
        if self.previous is not None:
            try:
                self._restore()
            except BaseException:
                pass


def set_memory_cache_limit(Py_ssize_t limit):
    """Keep at most `limit` bytes of freed buffers (0: none; a lower limit frees the oldest)."""
    global _cache_limit
    if limit < 0:
        raise ValueError(f"limit must be >= 0 bytes, got {limit}")
    _cache_limit = <size_t> limit
    convx_cache_set_limit(_cache_limit)


def memory_cache_stats():
    """The cache's limit, cached bytes and buffers, and hits and misses (requests of a size it
    keeps) since the process started."""
    cdef size_t cached
    cdef int buffers
    cdef unsigned long long hits, misses
    convx_cache_stats(&cached, &buffers, &hits, &misses)
    return {"limit": _cache_limit, "cached": cached, "buffers": buffers, "hits": hits, "misses": misses}
