# Process-wide thread state that must stay consistent whatever interrupts a call: the BLAS
# thread limit (convx._threads.single_threaded_blas) and the OpenMP runtime's identity (which
# decides whether a forked child may start threads).
#
# The limit's transitions are C: entered and left with the GIL held and no Python code in
# between (the BLAS thread counts are read and set through the libraries' own C entry points,
# not threadpoolctl's Python methods), so no Python thread can see a half-made change and no
# KeyboardInterrupt can land inside one. CPython raises KeyboardInterrupt only from its eval
# loop (between bytecodes) or where C code asks for pending signals, which none of this does.

from libc.stdint cimport int64_t, uintptr_t

cdef extern from *:
    """
    #if CONVX_OPENMP && (defined(__linux__) || defined(__APPLE__) || defined(__FreeBSD__))
    #include <dlfcn.h>
    /* The file of the OpenMP runtime this extension calls (GNU libgomp, LLVM libomp, Intel
       libiomp5...), as the dynamic loader resolved omp_get_max_threads; "" where unknown. */
    static const char* convx_openmp_library(void) {
        Dl_info info;
        if (dladdr((void*) &omp_get_max_threads, &info) && info.dli_fname) return info.dli_fname;
        return "";
    }
    #else
    static const char* convx_openmp_library(void) { return ""; }
    #endif

    #if CONVX_OPENMP && defined(__linux__)
    #include <link.h>
    #include <stdio.h>
    #include <string.h>
    /* Another loaded object that links the same OpenMP runtime as this extension (the loader
       keeps one copy per soname: PyTorch's libtorch_cpu.so shares "libgomp.so.1" with a convx
       built by GCC, whichever of them is loaded first), whose teams then share its thread
       pools. Found from each object's DT_NEEDED entries; copied into `out`, "" if none. */
    typedef struct {
        const char* self;    /* this extension's file */
        char runtime[256];   /* its DT_NEEDED entry of the OpenMP runtime */
        char* out;
        size_t out_size;
    } convx_sharer_scan;

    static const char* convx_needed_runtime(struct dl_phdr_info* info, const char* wanted) {
        for (int p = 0; p < info->dlpi_phnum; p++) {
            if (info->dlpi_phdr[p].p_type != PT_DYNAMIC) continue;
            const ElfW(Dyn)* dyn = (const ElfW(Dyn)*) (info->dlpi_addr + info->dlpi_phdr[p].p_vaddr);
            uintptr_t strtab = 0;
            for (const ElfW(Dyn)* d = dyn; d->d_tag != DT_NULL; d++)
                if (d->d_tag == DT_STRTAB) strtab = (uintptr_t) d->d_un.d_ptr;
            if (!strtab) continue;
            /* glibc relocates d_ptr in place for most objects, musl and the vDSO do not. */
            if (strtab < (uintptr_t) info->dlpi_addr) strtab += (uintptr_t) info->dlpi_addr;
            for (const ElfW(Dyn)* d = dyn; d->d_tag != DT_NULL; d++) {
                if (d->d_tag != DT_NEEDED) continue;
                const char* name = (const char*) strtab + d->d_un.d_val;
                if (wanted ? strcmp(name, wanted) == 0 : strstr(name, "omp") != NULL) return name;
            }
        }
        return NULL;
    }

    static int convx_find_own_runtime(struct dl_phdr_info* info, size_t size, void* data) {
        convx_sharer_scan* scan = (convx_sharer_scan*) data;
        (void) size;
        if (!info->dlpi_name || strcmp(info->dlpi_name, scan->self) != 0) return 0;
        const char* name = convx_needed_runtime(info, NULL);
        if (name) snprintf(scan->runtime, sizeof scan->runtime, "%s", name);
        return 1;
    }

    static int convx_find_sharer(struct dl_phdr_info* info, size_t size, void* data) {
        convx_sharer_scan* scan = (convx_sharer_scan*) data;
        (void) size;
        if (info->dlpi_name && strcmp(info->dlpi_name, scan->self) == 0) return 0;
        if (!convx_needed_runtime(info, scan->runtime)) return 0;
        snprintf(scan->out, scan->out_size, "%s", info->dlpi_name && info->dlpi_name[0] ? info->dlpi_name : "(main program)");
        return 1;
    }

    static void convx_openmp_sharer(char* out, size_t out_size) {
        Dl_info self;
        convx_sharer_scan scan;
        out[0] = 0;
        if (!dladdr((void*) &convx_openmp_sharer, &self) || !self.dli_fname) return;
        scan.self = self.dli_fname;
        scan.runtime[0] = 0;
        scan.out = out;
        scan.out_size = out_size;
        dl_iterate_phdr(convx_find_own_runtime, &scan);
        if (scan.runtime[0]) dl_iterate_phdr(convx_find_sharer, &scan);
    }
    #else
    static void convx_openmp_sharer(char* out, size_t out_size) { out[0] = 0; }
    #endif

    typedef int (*convx_int_getter)(void);
    typedef void (*convx_int_setter)(int);
    typedef int64_t (*convx_wide_getter)(void);
    typedef void (*convx_wide_setter)(int64_t);

    /* A BLAS thread count read and set through the library's C functions: int counts, or
       int64_t ones (BLIS's dim_t; only the low 32 bits are read back, as threadpoolctl does,
       which is right for 32-bit builds too). */
    static int convx_blas_get(uintptr_t get, int wide) {
        return wide ? (int) ((convx_wide_getter) get)() : ((convx_int_getter) get)();
    }
    static void convx_blas_set(uintptr_t set, int wide, int n) {
        if (wide) ((convx_wide_setter) set)((int64_t) n); else ((convx_int_setter) set)(n);
    }
    """
    const char* convx_openmp_library() noexcept nogil
    void convx_openmp_sharer(char* out, size_t out_size) noexcept nogil
    int convx_blas_get(uintptr_t get, int wide) noexcept nogil
    void convx_blas_set(uintptr_t set, int wide, int n) noexcept nogil


def _openmp_library():
    """The path of the OpenMP runtime the kernels run on, as the dynamic loader found it ('' when
    unknown or without OpenMP)."""
    return convx_openmp_library().decode("utf-8", "replace")


def _openmp_sharer():
    """Another loaded library linking the same OpenMP runtime as the kernels (its path), whose
    multi-thread teams would share the runtime's thread pools; '' when none is found."""
    cdef char out[4096]
    convx_openmp_sharer(out, sizeof(out))
    return out.decode("utf-8", "replace")


cdef enum:
    # BLAS libraries the limit holds at once (a process rarely has more than two: NumPy's and SciPy's).
    BLAS_MOST = 16

cdef struct _BlasLibrary:
    uintptr_t get
    uintptr_t set
    int wide
    # The count to give back when the last user leaves, 0 while this library is left alone.
    int saved

cdef _BlasLibrary _blas[BLAS_MOST]
# -1 until the libraries are looked up (at the first entry), then how many are in _blas.
cdef int _blas_count = -1
cdef long _blas_users = 0
# Bumped in a forked child, whose limit starts afresh: entries made before the fork (by the
# parent's other threads, which the child does not have) are then left by no one.
cdef unsigned long _blas_generation = 0
# The threadpoolctl controllers the entry points came from (they hold the libraries open).
cdef list _blas_controllers = []


cdef int _blas_resolve() except -1:
    global _blas_count, _blas_controllers
    # Python (threadpoolctl) runs here and may be interrupted or let another thread in; nothing
    # is changed until its result is stored below, in C, by whichever thread gets there first.
    from convx import _threads
    found = _threads._blas_entry_points()
    if _blas_count >= 0:
        return 0
    cdef int i = 0
    for controller, get, set_, wide in found[:BLAS_MOST]:
        _blas[i].get = get
        _blas[i].set = set_
        _blas[i].wide = wide
        _blas[i].saved = 0
        i += 1
    _blas_controllers = [entry[0] for entry in found[:BLAS_MOST]]
    _blas_count = i
    return 0


cdef int _blas_hold() except -1:
    """Enter the limit: the first user sets every library not already at one thread to one."""
    global _blas_users
    cdef int i, n
    if _blas_count < 0:
        _blas_resolve()
    if _blas_users == 0:
        for i in range(_blas_count):
            n = convx_blas_get(_blas[i].get, _blas[i].wide)
            _blas[i].saved = n if n > 1 else 0
            if n > 1:
                convx_blas_set(_blas[i].set, _blas[i].wide, 1)
    _blas_users += 1
    return 0


cdef void _blas_give_back() noexcept:
    cdef int i
    for i in range(max(_blas_count, 0)):
        if _blas[i].saved:
            convx_blas_set(_blas[i].set, _blas[i].wide, _blas[i].saved)
            _blas[i].saved = 0


cdef void _blas_leave(unsigned long generation) noexcept:
    """Leave the limit entered in ``generation``: the last user gives every count back."""
    global _blas_users
    if generation != _blas_generation or _blas_users <= 0:
        return
    _blas_users -= 1
    if _blas_users == 0:
        _blas_give_back()


cdef class _BlasLimit:
    """One use of the BLAS thread limit, as a context manager (see convx._threads.single_threaded_blas).

    Each object is entered at most once; a second ``__enter__`` while it is held raises. An
    object dropped while held leaves the limit: a Python ``with`` statement skips ``__exit__``
    when an exception lands between its body and that call (CPython pushes the arguments
    first), but the interpreter still drops the object as the exception unwinds.
    """
    cdef bint held
    cdef unsigned long generation

    def __enter__(self):
        if self.held:
            raise RuntimeError("this BLAS limit is already entered; make a new one per use")
        _blas_hold()
        self.generation = _blas_generation
        self.held = True

    def __exit__(self, exc_type, exc_value, traceback):
        if self.held:
            self.held = False
            _blas_leave(self.generation)
        return False

    def __dealloc__(self):
        if self.held:
            self.held = False
            _blas_leave(self.generation)


def _blas_state():
    """(users, [(controller, count to restore), ...]): the limit's bookkeeping, for tests and
    convx._threads._blas_users / _blas_restore."""
    restore = [(_blas_controllers[i], _blas[i].saved) for i in range(max(_blas_count, 0)) if _blas[i].saved]
    return _blas_users, restore


def _blas_after_fork_in_child():
    """In a forked child: give back what the parent's limit held (its holders did not come along)
    and start a new generation, so that their entries, if the forking thread was one, leave nothing."""
    global _blas_users, _blas_generation
    if _blas_users > 0:
        _blas_give_back()
    _blas_users = 0
    _blas_generation += 1


cdef class _Scope:
    """``setattr(state, field, value)`` while entered, the previous value back on exit: the
    per-thread settings of convx.nn (module-call depth, gradient mode), kept here so that no
    Python line runs between the change and the guarantee of its undoing (an interrupt at any
    bytecode, as tests/test_interrupt_state.py injects, leaves them as they were). As with
    _BlasLimit, an object dropped while entered undoes its change. Each object is entered once.
    """
    cdef object state
    cdef str field
    cdef object value
    cdef object previous
    cdef bint held

    def __init__(self, state, str field, value):
        self.state = state
        self.field = field
        self.value = value

    def __enter__(self):
        if self.held:
            raise RuntimeError(f"this {type(self).__name__} is already entered; make a new one per use")
        self.previous = getattr(self.state, self.field)
        setattr(self.state, self.field, self.value)
        self.held = True

    def __exit__(self, exc_type, exc_value, traceback):
        if self.held:
            self.held = False
            setattr(self.state, self.field, self.previous)
        return False

    def __dealloc__(self):
        if self.held:
            self.held = False
            setattr(self.state, self.field, self.previous)
