# Depthwise convolution (one input channel per group, any channel multiplier): a GEMM per group
# would have a single-row operand, so the kernels loop over the taps instead.
#
# Two implementations. The phase-split sweeps (_depthwise.h, cloned per instruction set) copy
# planes into zero-padded buffers split into their stride phases, where every tap of every
# output of a plane (or of several small planes of one channel, stacked) is one unit-stride
# sweep; the direct loops (_simd.h) run along each output row and clip each tap to the input,
# and take what the sweeps cannot: geometries whose buffers would outgrow the scratch bound
# (padding or dilation far past the input) and input gradients through a non-finite weight,
# whose products with grad_out's padding the sweeps would make NaN. Which of the two runs where
# both apply is the table below.

cdef extern from "_depthwise.h" nogil:
    ctypedef struct DwGeometry "convx_dw_geometry":
        Py_ssize_t height, width, out_h, out_w
        Py_ssize_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    ctypedef struct DwLayout "convx_dw_layout":
        Py_ssize_t planes, band, slot_rows, head_rows, tail_rows, row_phases, col_phases
        Py_ssize_t cols, lane_rows, head, phase, lanes, taps
    DwLayout convx_dw_gather_layout(const DwGeometry* g, Py_ssize_t batch, Py_ssize_t budget)
    DwLayout convx_dw_scatter_layout(const DwGeometry* g, Py_ssize_t batch, Py_ssize_t budget)
    Py_ssize_t convx_dw_forward_scratch(const DwLayout* L)
    Py_ssize_t convx_dw_weight_scratch(const DwLayout* L, Py_ssize_t multiplier)
    Py_ssize_t convx_dw_input_scratch(const DwLayout* L, const DwGeometry* g)
    void convx_dw_gather_offsets(const DwGeometry* g, const DwLayout* L, Py_ssize_t* off)
    void convx_dw_scatter_offsets(const DwGeometry* g, const DwLayout* L, Py_ssize_t* off, Py_ssize_t* taps,
                                  Py_ssize_t* start)
    void convx_dw_forward_planes_f(const float* x, Py_ssize_t x_stride, Py_ssize_t count, const float* w,
                                   const float* bias, Py_ssize_t multiplier, float* out, Py_ssize_t out_stride,
                                   const DwGeometry* g, const DwLayout* L, const Py_ssize_t* off, float* scratch)
    void convx_dw_forward_planes_d(const double* x, Py_ssize_t x_stride, Py_ssize_t count, const double* w,
                                   const double* bias, Py_ssize_t multiplier, double* out, Py_ssize_t out_stride,
                                   const DwGeometry* g, const DwLayout* L, const Py_ssize_t* off, double* scratch)
    void convx_dw_weight_channel_f(const float* x, Py_ssize_t x_stride, const float* dy, Py_ssize_t dy_stride,
                                   Py_ssize_t batch, Py_ssize_t multiplier, float* grad_w, const DwGeometry* g,
                                   const DwLayout* L, const Py_ssize_t* off, float* scratch, int* dirty)
    void convx_dw_weight_channel_d(const double* x, Py_ssize_t x_stride, const double* dy, Py_ssize_t dy_stride,
                                   Py_ssize_t batch, Py_ssize_t multiplier, double* grad_w, const DwGeometry* g,
                                   const DwLayout* L, const Py_ssize_t* off, double* scratch, int* dirty)
    void convx_dw_input_planes_f(const float* dy, Py_ssize_t dy_stride, Py_ssize_t count, const float* w,
                                 Py_ssize_t multiplier, float* grad_in, Py_ssize_t gi_stride, const DwGeometry* g,
                                 const DwLayout* L, const Py_ssize_t* off, const Py_ssize_t* taps,
                                 const Py_ssize_t* start, float* scratch)
    void convx_dw_input_planes_d(const double* dy, Py_ssize_t dy_stride, Py_ssize_t count, const double* w,
                                 Py_ssize_t multiplier, double* grad_in, Py_ssize_t gi_stride, const DwGeometry* g,
                                 const DwLayout* L, const Py_ssize_t* off, const Py_ssize_t* taps,
                                 const Py_ssize_t* start, double* scratch)


cdef enum:
    # See _dw_work_fits.
    DW_WORK_MULTIPLE = 8
    DW_WORK_SLACK = 1 << 12


# Bytes of one thread's phase-split buffer (and about as many of results): planes are stacked, or
# large ones banded, to about this size, within L1 with the outputs they are copied to (on the
# Xeon of DW_DIRECT_FROM 8, 16 and 32 KiB ran within about 15% of each other, 16 KiB the best or
# near it on most layers).
cdef Py_ssize_t DW_BUDGET_BYTES = 1 << 14


def _set_depthwise_budget(Py_ssize_t budget_bytes):
    """For tuning only: the phase-split buffer's budget in bytes; returns the previous one."""
    global DW_BUDGET_BYTES
    previous = DW_BUDGET_BYTES
    DW_BUDGET_BYTES = budget_bytes
    return previous


cdef DwGeometry _dw_geometry(ConvGeometry* g) noexcept nogil:
    cdef DwGeometry d
    d.height = g.height
    d.width = g.width
    d.out_h = g.out_h
    d.out_w = g.out_w
    d.kernel_h = g.kernel_h
    d.kernel_w = g.kernel_w
    d.stride_h = g.stride_h
    d.stride_w = g.stride_w
    d.pad_h = g.pad_h
    d.pad_w = g.pad_w
    d.dilation_h = g.dilation_h
    d.dilation_w = g.dilation_w
    return d


cdef inline bint _dw_scratch_fits(Py_ssize_t slot, ConvGeometry* g) noexcept nogil:
    """Whether a thread's phase-split scratch stays within the bound of every padded copy
    (SCRATCH_IMAGE_MULTIPLE times one image's input and output, plus SCRATCH_SLACK)."""
    cdef double image = (<double> (g.groups * g.c_in_g) * <double> g.height * <double> g.width
                         + <double> (g.groups * g.c_out_g) * <double> g.out_h * <double> g.out_w)
    return slot <= SCRATCH_IMAGE_MULTIPLE * image + SCRATCH_SLACK


cdef inline bint _dw_work_fits(DwLayout* L, ConvGeometry* g, Py_ssize_t rows, Py_ssize_t fills,
                               Py_ssize_t sweeps) noexcept nogil:
    """Whether the sweeps' work per plane (for each band of the `rows` lane rows, the buffer filled
    `fills` times and the lanes swept `sweeps` times) stays within DW_WORK_MULTIPLE times the
    plane's input and outputs plus DW_WORK_SLACK: padding or dilation far past the plane (whose
    zeros the direct loops skip) would have the sweeps spend their time on zeros."""
    cdef double bands = (rows + L.band - 1) // L.band
    cdef double buffer = (<double> (L.head_rows + L.planes * L.slot_rows + L.tail_rows * L.row_phases)
                          * L.cols * L.col_phases)
    cdef double per_plane = bands * (fills * buffer + <double> sweeps * L.lanes) / L.planes
    cdef double plane = <double> g.height * g.width + <double> g.c_out_g * g.out_h * g.out_w
    return per_plane <= DW_WORK_MULTIPLE * plane + DW_WORK_SLACK


cdef inline bint _dw_geometry_bounded(ConvGeometry* g) noexcept nogil:
    """Whether the buffers' sizes and offsets can be worked out without overflow: every padded
    extent below 2**30 (the direct loops take the rest)."""
    cdef Py_ssize_t most = 1 << 30
    return (g.height + 2 * g.pad_h < most and g.width + 2 * g.pad_w < most
            and (g.kernel_h - 1) * <double> g.dilation_h < most and (g.kernel_w - 1) * <double> g.dilation_w < most
            and g.out_h * <double> g.stride_h < most and g.out_w * <double> g.stride_w < most
            and g.kernel_h * <double> g.kernel_w < most)


DEPTHWISE_KERNELS = ("auto", "split", "direct")
# 'auto': the table below; 'split' / 'direct' force the phase-split sweeps (wherever they apply) or
# the direct loops, for tests and benchmarks.
cdef int _depthwise_mode = 0


cdef inline int _dw_mode() noexcept nogil:
    """The depthwise kernel this thread's calls use: its own (ConvConfig), else set_depthwise_kernel's."""
    cdef int mode = convx_get_thread_depthwise_mode()
    return _depthwise_mode if mode < 0 else mode


def depthwise_kernel():
    """How depthwise convolutions run: 'auto' (per layer and op, the preference table in
    _depthwise.pxi), or forced to 'split' (the phase-split sweeps, wherever they apply) or
    'direct' (the row loops)."""
    return DEPTHWISE_KERNELS[_depthwise_mode]


def set_depthwise_kernel(name):
    """Set depthwise_kernel's mode; for tests and benchmarks, not thread-safe against running calls."""
    global _depthwise_mode
    if name not in DEPTHWISE_KERNELS:
        raise ValueError(f"depthwise kernel must be one of {', '.join(map(repr, DEPTHWISE_KERNELS))}, got {name!r}")
    _depthwise_mode = DEPTHWISE_KERNELS.index(name)


cdef enum:
    # The ops of _split_prefers
    DW_FORWARD = 0
    DW_INPUT = 1
    DW_WEIGHT = 2


# Which implementation runs where both apply, as data. The direct loops' 3x3 stride-1 kernels
# (the nine products of an output in registers along a row; the input gradient's only with one
# filter per channel) beat the sweeps on wide rows, which they take in one pass where the sweeps
# copy the planes in and the results out; everywhere else measured the sweeps ran 1.6-5x faster
# (3x3 stride 2, 5x5 and 7x7 at strides 1 and 2, dilated taps, planes of 2x2 to 16x16, up to 112x112).
# DW_DIRECT_FROM[dtype * 3 + op] (dtype 0 float32, 1 float64; op DW_FORWARD, DW_INPUT,
# DW_WEIGHT): the output row length (out_w) from which a 3x3, stride-1, dilation-1 layer takes
# the direct loops. Measured on one CPU only, a 2-core Intel Xeon (family 6 model 167, Sapphire
# Rapids; the AVX-512 clones) by bench/depthwise_crossovers.py: kernels called directly at batch
# 32 with C*H*W = 2**16 per image, square planes of 16 to 112, 1 and 2 threads, interleaved
# medians; sweeps' time / direct loops' time at the rows around each threshold, 1 thread / 2 threads:
#   float32 forward  48: 0.85 / 0.89   56: 0.99 / 1.00   64: 1.25 / 1.21   80: 1.25 / 1.15
#   float32 input    40: 0.86 / 0.85   48: 1.00 / 1.04   56: 1.03 / 1.06   64: 1.14 / 1.09
#   float32 weight   56: 0.85 / 0.87   64: 1.16 / 1.09   80: 1.02 / 0.95  112: 1.04 / 1.02
#   float64 forward  16: 0.78 / 0.83   24: 0.98 / 1.02   32: 1.16 / 1.12
#   float64 input    16: 0.79 / 0.83   24: 1.01 / 1.17   32: 1.20 / 1.25
#   float64 weight   24: 1.11 / 0.91   32: 0.92 / 0.98   40: 1.00 / 0.99   48: 1.08 / 1.07
# and below the thresholds down to 2x2 planes 0.17-0.87 (float32), 0.26-0.98 (float64). float64's
# sweeps lose earlier: their rows of 16 doubles and more are copied by calls to memcpy, through
# twice the bytes. AVX2-only CPUs were not measured.
cdef Py_ssize_t DW_DIRECT_FROM[6]
DW_DIRECT_FROM[:] = [56, 48, 64, 24, 24, 48]


cdef bint _direct_3x3_applies(int op, ConvGeometry* g) noexcept nogil:
    """Whether the direct loops' 3x3 stride-1 kernel (convx_dw_*_plane's, _rotated_applies's) runs
    the op: 3x3, stride 1, dilation 1 (and for the input gradient one filter per channel)."""
    if not (g.kernel_h == 3 and g.kernel_w == 3 and g.stride_h == 1 and g.stride_w == 1
            and g.dilation_h == 1 and g.dilation_w == 1):
        return False
    return op != DW_INPUT or g.c_out_g == 1


cdef bint _split_prefers(int op, ConvGeometry* g, bint double) noexcept nogil:
    """Whether the phase-split sweeps should run where both implementations apply (the mode set by
    set_depthwise_kernel, else DW_DIRECT_FROM)."""
    if _dw_mode() != 0:
        return _dw_mode() == 1
    return not (_direct_3x3_applies(op, g) and g.out_w >= DW_DIRECT_FROM[3 * double + op])


cdef bint _split_layout(int op, ConvGeometry* g, Py_ssize_t itemsize, DwLayout* L, Py_ssize_t* slot) noexcept nogil:
    """The sweeps' layout *L and per-thread scratch *slot (elements) for op on g; whether the sweeps
    apply to it (hard limits only: sizes that cannot overflow, scratch and work within bounds)."""
    if not _dw_geometry_bounded(g):
        return False
    cdef DwGeometry d = _dw_geometry(g)
    cdef Py_ssize_t budget = DW_BUDGET_BYTES // itemsize, m = g.c_out_g
    cdef Py_ssize_t phase_rows = (g.height + g.pad_h + g.stride_h - 1) // g.stride_h
    if op == DW_INPUT:
        L[0] = convx_dw_scatter_layout(&d, g.batch, budget)
        slot[0] = convx_dw_input_scratch(L, &d)
        return _dw_scratch_fits(slot[0], g) and _dw_work_fits(L, g, phase_rows, m, g.stride_h * g.stride_w * m)
    L[0] = convx_dw_gather_layout(&d, g.batch, budget)
    if op == DW_FORWARD:
        slot[0] = convx_dw_forward_scratch(L)
        return _dw_scratch_fits(slot[0], g) and _dw_work_fits(L, g, g.out_h, 1, m)
    slot[0] = convx_dw_weight_scratch(L, m)
    return _dw_scratch_fits(slot[0], g) and _dw_work_fits(L, g, g.out_h, 1 + m, m)


DEPTHWISE_OPS = ("forward", "input", "weight")


def depthwise_implementation(op, batch, c_in, height, width, c_out, kernel_h, kernel_w, out_h, out_w,
                             stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, itemsize):
    """(name, why): which implementation the depthwise kernel of ``op`` (one of DEPTHWISE_OPS) runs for
    this geometry, given as the kernels take it: 'split' (the phase-split sweeps) or 'direct' (the
    row loops). The input gradient's channels with a non-finite weight take 'direct' whatever this says."""
    cdef int index = DEPTHWISE_OPS.index(op)
    cdef ConvGeometry g = _geometry(batch, c_in, height, width, c_out, kernel_h, kernel_w, out_h, out_w, groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, 1)
    cdef DwLayout L
    cdef Py_ssize_t slot
    if _dw_mode() == 2:
        return "direct", "set_depthwise_kernel('direct')"
    if not _split_layout(index, &g, itemsize, &L, &slot):
        return "direct", ("the sweeps' buffers or work would outgrow their bounds (padding or dilation far past "
                          "the plane)")
    if _dw_mode() == 1:
        return "split", "set_depthwise_kernel('split')"
    if not _split_prefers(index, &g, itemsize == 8):
        return "direct", (f"3x3 stride 1 with rows of {out_w} outputs, at least DW_DIRECT_FROM's "
                          f"{DW_DIRECT_FROM[3 * (itemsize == 8) + index]} for this dtype and op")
    return "split", f"{L.planes} plane(s) per sweep" + (f", bands of {L.band} rows" if L.planes == 1 else "")


cdef object _split_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                           const floating[::1] bias, floating[:, :, :, ::1] out, ConvGeometry* g, int n_threads,
                           const convx_epilogue* epi):
    """depthwise_forward by the phase-split sweeps, the activation of epi (where given) applied to
    each item's planes as soon as they are written; False (having done nothing) where they do not
    apply."""
    cdef DwLayout L
    cdef Py_ssize_t slot
    if not _split_layout(DW_FORWARD, g, sizeof(floating), &L, &slot):
        return False
    cdef DwGeometry d = _dw_geometry(g)
    cdef Py_ssize_t[::1] off = np.empty(L.taps, dtype=np.intp)
    convx_dw_gather_offsets(&d, &L, &off[0])
    cdef Py_ssize_t c_in = x.shape[1], m = g.c_out_g, c_out = out.shape[1]
    cdef Py_ssize_t blocks = (g.batch + L.planes - 1) // L.planes
    cdef Py_ssize_t items = blocks * c_in
    cdef int team = _team(n_threads, items)
    cdef floating[::1] scratch = np.empty(team * slot, dtype=np.asarray(out).dtype)
    cdef bint has_bias = bias.shape[0] > 0
    cdef Py_ssize_t x_stride = c_in * g.height * g.width, out_stride = c_out * g.out_h * g.out_w
    cdef Py_ssize_t item, ci, n0, tid, b
    cdef floating* mine
    with nogil, parallel(num_threads=team):
        tid = threadid()
        mine = &scratch[tid * slot]
        memset(mine, 0, slot * sizeof(floating))
        for item in prange(items, schedule='static'):
            # images first within a channel, then channels: consecutive items read neighbouring planes
            n0 = (item // c_in) * L.planes
            ci = item % c_in
            if floating is float:
                convx_dw_forward_planes_f(&x[n0, ci, 0, 0], x_stride, min(L.planes, g.batch - n0),
                                          &weight[ci * m, 0, 0, 0], &bias[ci * m] if has_bias else NULL, m,
                                          &out[n0, ci * m, 0, 0], out_stride, &d, &L, &off[0], mine)
            else:
                convx_dw_forward_planes_d(&x[n0, ci, 0, 0], x_stride, min(L.planes, g.batch - n0),
                                          &weight[ci * m, 0, 0, 0], &bias[ci * m] if has_bias else NULL, m,
                                          &out[n0, ci * m, 0, 0], out_stride, &d, &L, &off[0], mine)
            if epi != NULL:
                for b in range(min(L.planes, g.batch - n0)):
                    _activate(&out[n0 + b, ci * m, 0, 0], m * g.out_h * g.out_w, epi)
    return True


cdef object _split_input(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] weight,
                         floating[:, :, :, ::1] grad_in, ConvGeometry* g, int n_threads):
    """depthwise_backward_input by the phase-split sweeps (input channels with a non-finite weight by
    the direct loops); False (having done nothing) where they do not apply."""
    cdef DwLayout L
    cdef Py_ssize_t slot
    if not _split_layout(DW_INPUT, g, sizeof(floating), &L, &slot):
        return False
    cdef DwGeometry d = _dw_geometry(g)
    cdef Py_ssize_t[::1] off = np.empty(L.taps, dtype=np.intp)
    cdef Py_ssize_t[::1] taps = np.empty(L.taps, dtype=np.intp)
    cdef Py_ssize_t[::1] start = np.empty(g.stride_h * g.stride_w + 1, dtype=np.intp)
    convx_dw_scatter_offsets(&d, &L, &off[0], &taps[0], &start[0])
    cdef Py_ssize_t c_in = grad_in.shape[1], m = g.c_out_g, c_out = grad_out.shape[1]
    cdef Py_ssize_t n_taps = L.taps
    # Channels whose filters hold inf or NaN take the direct loops (see the top of this file).
    cdef unsigned char[::1] finite = np.empty(c_in, dtype=np.uint8)
    cdef Py_ssize_t ci
    for ci in range(c_in):
        finite[ci] = _all_finite(&weight[ci * m, 0, 0, 0], m * n_taps)
    cdef Py_ssize_t[::1] ranges = _column_ranges(g)
    cdef Py_ssize_t blocks = (g.batch + L.planes - 1) // L.planes
    cdef Py_ssize_t items = blocks * c_in
    cdef int team = _team(n_threads, items)
    cdef floating[::1] scratch = np.empty(team * slot, dtype=np.asarray(grad_in).dtype)
    cdef Py_ssize_t dy_stride = c_out * g.out_h * g.out_w, gi_stride = c_in * g.height * g.width
    cdef Py_ssize_t item, n0, n, count, tid
    cdef floating* mine
    with nogil, parallel(num_threads=team):
        tid = threadid()
        mine = &scratch[tid * slot]
        memset(mine, 0, slot * sizeof(floating))
        for item in prange(items, schedule='static'):
            n0 = (item // c_in) * L.planes
            ci = item % c_in
            count = min(L.planes, g.batch - n0)
            if not finite[ci]:
                for n in range(n0, n0 + count):
                    _direct_backward_input_plane(&grad_out[n, ci * m, 0, 0], &weight[ci * m, 0, 0, 0],
                                                 &grad_in[n, ci, 0, 0], g, &ranges[0], &ranges[g.kernel_w])
            elif floating is float:
                convx_dw_input_planes_f(&grad_out[n0, ci * m, 0, 0], dy_stride, count, &weight[ci * m, 0, 0, 0],
                                        m, &grad_in[n0, ci, 0, 0], gi_stride, &d, &L, &off[0], &taps[0],
                                        &start[0], mine)
            else:
                convx_dw_input_planes_d(&grad_out[n0, ci * m, 0, 0], dy_stride, count, &weight[ci * m, 0, 0, 0],
                                        m, &grad_in[n0, ci, 0, 0], gi_stride, &d, &L, &off[0], &taps[0],
                                        &start[0], mine)
    return True


cdef object _split_weight(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                          floating[:, :, :, ::1] grad_weight, ConvGeometry* g, int n_threads):
    """depthwise_backward_weight by the phase-split sweeps, one thread per input channel (all its
    filters, the whole batch); False (having done nothing) where they do not apply."""
    cdef DwLayout L
    cdef Py_ssize_t slot
    if not _split_layout(DW_WEIGHT, g, sizeof(floating), &L, &slot):
        return False
    cdef DwGeometry d = _dw_geometry(g)
    cdef Py_ssize_t m = g.c_out_g
    cdef Py_ssize_t[::1] off = np.empty(L.taps, dtype=np.intp)
    convx_dw_gather_offsets(&d, &L, &off[0])
    cdef Py_ssize_t c_in = x.shape[1], c_out = grad_out.shape[1]
    cdef int team = _team(n_threads, c_in)
    cdef floating[::1] scratch = np.empty(team * slot, dtype=np.asarray(grad_weight).dtype)
    # Per thread: whether a non-finite input has been through its buffer (convx_dw_weight_channel),
    # each flag on a cache line of its own.
    cdef int[::1] dirty = np.zeros(16 * team, dtype=np.intc)
    cdef Py_ssize_t x_stride = c_in * g.height * g.width, dy_stride = c_out * g.out_h * g.out_w
    cdef Py_ssize_t ci, tid
    cdef floating* mine
    with nogil, parallel(num_threads=team):
        tid = threadid()
        mine = &scratch[tid * slot]
        memset(mine, 0, slot * sizeof(floating))
        for ci in prange(c_in, schedule='static'):
            if floating is float:
                convx_dw_weight_channel_f(&x[0, ci, 0, 0], x_stride, &grad_out[0, ci * m, 0, 0], dy_stride, g.batch,
                                          m, &grad_weight[ci * m, 0, 0, 0], &d, &L, &off[0], mine,
                                          &dirty[16 * tid])
            else:
                convx_dw_weight_channel_d(&x[0, ci, 0, 0], x_stride, &grad_out[0, ci * m, 0, 0], dy_stride, g.batch,
                                          m, &grad_weight[ci * m, 0, 0, 0], &d, &L, &off[0], mine,
                                          &dirty[16 * tid])
    return True


cdef extern from "_simd.h" nogil:
    void convx_dw_forward_plane_f(const float* image, const float* w, float bias, float* out,
                                  Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                  Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, const Py_ssize_t* lo,
                                  const Py_ssize_t* hi)
    void convx_dw_forward_plane_d(const double* image, const double* w, double bias, double* out,
                                  Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                  Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, const Py_ssize_t* lo,
                                  const Py_ssize_t* hi)
    void convx_dw_backward_input_plane_f(const float* grad_out, const float* w, float* grad_in,
                                         Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h,
                                         Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                         Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                                         Py_ssize_t dw, const Py_ssize_t* lo, const Py_ssize_t* hi)
    void convx_dw_backward_input_plane_d(const double* grad_out, const double* w, double* grad_in,
                                         Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h,
                                         Py_ssize_t out_w, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                         Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                                         Py_ssize_t dw, const Py_ssize_t* lo, const Py_ssize_t* hi)
    void convx_dw_weight_plane_f(const float* grad_out, const float* image, float* partial,
                                 Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                                 Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                 Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, const Py_ssize_t* lo,
                                 const Py_ssize_t* hi)
    void convx_dw_weight_plane_d(const double* grad_out, const double* image, double* partial,
                                 Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                                 Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                 Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, const Py_ssize_t* lo,
                                 const Py_ssize_t* hi)


cdef void _direct_forward_plane(const floating* image, const floating* weight, floating bias,
                                floating* out, ConvGeometry* g, const Py_ssize_t* lo,
                                const Py_ssize_t* hi) noexcept nogil:
    """out[oh, ow] = bias + sum_{i, j} weight[i, j] * image_padded[oh*sh + i*dh, ow*sw + j*dw]."""
    if floating is float:
        convx_dw_forward_plane_f(image, weight, bias, out, g.height, g.width, g.out_h, g.out_w, g.kernel_h,
                                 g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h,
                                 g.dilation_w, lo, hi)
    else:
        convx_dw_forward_plane_d(image, weight, bias, out, g.height, g.width, g.out_h, g.out_w, g.kernel_h,
                                 g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h,
                                 g.dilation_w, lo, hi)
    if not _all_finite(weight, g.kernel_h * g.kernel_w):
        _direct_forward_padding(weight, out, g)


cdef Py_ssize_t[::1] _column_ranges(ConvGeometry* g):
    """lo[j], hi[j] (in one array: lo, then hi): the outputs ow whose tap j lands inside the row."""
    cdef Py_ssize_t[::1] ranges = np.empty(2 * g.kernel_w, dtype=np.intp)
    cdef Py_ssize_t j
    for j in range(g.kernel_w):
        _valid_range(j * g.dilation_w - g.pad_w, g.stride_w, g.width, g.out_w, &ranges[j], &ranges[g.kernel_w + j])
    return ranges


cdef inline bint _all_finite(const floating* values, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return convx_all_finite_f(values, n)
    else:
        return convx_all_finite_d(values, n)


cdef void _direct_forward_padding(const floating* weight, floating* out, ConvGeometry* g) noexcept nogil:
    """out[oh, ow] += 0 * weight[i, j] for every tap in the padding: NaN where the tap is not finite.

    im2col multiplies the padding's zeros by the weights, as the definition (and PyTorch) does;
    the direct loops skip those products, so a non-finite tap's would go missing without this.
    """
    cdef Py_ssize_t oh, ow, i, j, ih, lo, hi
    cdef floating zero_product
    cdef floating* dst
    for i in range(g.kernel_h):
        for j in range(g.kernel_w):
            zero_product = 0 * weight[i * g.kernel_w + j]
            if zero_product == 0:
                continue
            _valid_range(j * g.dilation_w - g.pad_w, g.stride_w, g.width, g.out_w, &lo, &hi)
            for oh in range(g.out_h):
                dst = out + oh * g.out_w
                ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                for ow in range(g.out_w):
                    if ih < 0 or ih >= g.height or ow < lo or ow >= hi:
                        dst[ow] = dst[ow] + zero_product


cdef void _direct_backward_input_plane(const floating* grad_out, const floating* weight,
                                       floating* grad_in, ConvGeometry* g, const Py_ssize_t* lo,
                                       const Py_ssize_t* hi) noexcept nogil:
    """grad_in[ih, iw] += weight[m, i, j] * grad_out[m, oh, ow] over the group's c_out_g outputs m; grad_in is overwritten."""
    cdef Py_ssize_t m
    cdef Py_ssize_t n_out = g.out_h * g.out_w, taps = g.kernel_h * g.kernel_w
    memset(grad_in, 0, g.height * g.width * sizeof(floating))
    for m in range(g.c_out_g):
        if floating is float:
            convx_dw_backward_input_plane_f(grad_out + m * n_out, weight + m * taps, grad_in, g.height, g.width,
                                            g.out_h, g.out_w, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w,
                                            g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, lo, hi)
        else:
            convx_dw_backward_input_plane_d(grad_out + m * n_out, weight + m * taps, grad_in, g.height, g.width,
                                            g.out_h, g.out_w, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w,
                                            g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, lo, hi)


cdef void _direct_weight_plane(const floating* grad_out, const floating* image, floating* partial,
                               ConvGeometry* g, const Py_ssize_t* lo, const Py_ssize_t* hi) noexcept nogil:
    """partial[tap, ow] += grad_out[oh, ow] * image_padded[oh*sh + i*dh, ow*sw + j*dw] over oh, every tap."""
    if floating is float:
        convx_dw_weight_plane_f(grad_out, image, partial, g.height, g.width, g.out_h, g.out_w, g.kernel_h,
                                g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h,
                                g.dilation_w, lo, hi)
    else:
        convx_dw_weight_plane_d(grad_out, image, partial, g.height, g.width, g.out_h, g.out_w, g.kernel_h,
                                g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h,
                                g.dilation_w, lo, hi)


cdef inline bint _reaches_padding(ConvGeometry* g) noexcept nogil:
    """Whether some tap falls outside the input: in the top/left padding or, with 'same' and
    even kernels or a stride that overshoots, in the bottom/right one."""
    return (g.pad_h > 0 or g.pad_w > 0
            or (g.out_h - 1) * g.stride_h - g.pad_h + (g.kernel_h - 1) * g.dilation_h >= g.height
            or (g.out_w - 1) * g.stride_w - g.pad_w + (g.kernel_w - 1) * g.dilation_w >= g.width)


cdef floating _direct_weight_tap_padding(const floating* grad_out, ConvGeometry* g,
                                         Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    """sum of 0 * grad_out[oh, ow] over the outputs whose tap (i, j) falls in the padding.

    Zero for finite gradients, NaN where one of them is not finite: the products with the
    padding's zeros that im2col computes and the direct loops skip.
    """
    cdef Py_ssize_t oh, ow, ih, lo, hi
    cdef floating total = 0
    cdef const floating* dy
    _valid_range(j * g.dilation_w - g.pad_w, g.stride_w, g.width, g.out_w, &lo, &hi)
    for oh in range(g.out_h):
        dy = grad_out + oh * g.out_w
        ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
        for ow in range(g.out_w):
            if ih < 0 or ih >= g.height or ow < lo or ow >= hi:
                total = total + 0 * dy[ow]
    return total


cdef void _direct_weight_finish(const floating* partial, const floating* grad_out, Py_ssize_t image_stride,
                                const unsigned char* non_finite, Py_ssize_t flag_stride, ConvGeometry* g,
                                floating* grad_weight) noexcept nogil:
    """grad_weight[tap] = partial summed over its columns, plus the padding's products with the
    non-finite planes n of grad_out (grad_out + n * image_stride, flagged non_finite[n * flag_stride];
    none when non_finite is NULL): one output channel's weight gradient."""
    cdef Py_ssize_t tap, ow, n
    cdef floating total
    for tap in range(g.kernel_h * g.kernel_w):
        total = 0
        for ow in range(g.out_w):
            total = total + partial[tap * g.out_w + ow]
        if non_finite != NULL:
            for n in range(g.batch):
                if non_finite[n * flag_stride]:
                    total = total + _direct_weight_tap_padding(grad_out + n * image_stride, g, tap // g.kernel_w,
                                                               tap % g.kernel_w)
        grad_weight[tap] = total


cdef inline bint _rotated_applies(ConvGeometry* g) noexcept nogil:
    """One output channel per input channel, 3x3, stride 1, dilation 1: the input gradient is the
    correlation of grad_out, padded by 2 - p, with the kernel rotated by 180 degrees, which the
    forward plane kernel computes with its nine sums in registers (only the products inside
    grad_out, as the scatter of _direct_backward_input_plane)."""
    return (g.c_out_g == 1 and g.kernel_h == 3 and g.kernel_w == 3 and g.stride_h == 1 and g.stride_w == 1
            and g.dilation_h == 1 and g.dilation_w == 1)


cdef Py_ssize_t[::1] _rotated_ranges(ConvGeometry* g):
    """_column_ranges of that correlation: grad_out (out_w wide) in, grad_in (width wide) out."""
    cdef Py_ssize_t[::1] ranges = np.empty(6, dtype=np.intp)
    cdef Py_ssize_t j
    for j in range(3):
        _valid_range(j - (2 - g.pad_w), 1, g.out_w, g.width, &ranges[j], &ranges[3 + j])
    return ranges


cdef void _rotated_input_plane(const floating* grad_out, const floating* rotated, floating* grad_in,
                               ConvGeometry* g, const Py_ssize_t* ranges) noexcept nogil:
    """grad_in = corr(grad_out padded by 2 - p, rotated), one plane (see _rotated_applies); overwritten."""
    if floating is float:
        convx_dw_forward_plane_f(grad_out, rotated, 0, grad_in, g.out_h, g.out_w, g.height, g.width, 3, 3, 1, 1,
                                 2 - g.pad_h, 2 - g.pad_w, 1, 1, ranges, ranges + 3)
    else:
        convx_dw_forward_plane_d(grad_out, rotated, 0, grad_in, g.out_h, g.out_w, g.height, g.width, 3, 3, 1, 1,
                                 2 - g.pad_h, 2 - g.pad_w, 1, 1, ranges, ranges + 3)


def depthwise_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                      const floating[::1] bias, floating[:, :, :, ::1] out,
                      int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                      int groups, int n_threads, int activation=-1, double p0=0, double p1=0):
    """conv2d_forward for weight.shape[1] == 1: out[n, co] = act(bias[co] + corr(x[n, co // (C_out/groups)], w[co, 0])),
    act as in conv2d_forward, applied to each plane as soon as it is written."""
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], weight.shape[0],
                                    weight.shape[2], weight.shape[3], out.shape[2], out.shape[3], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t c_out = out.shape[1]
    cdef Py_ssize_t item, n, co
    cdef bint has_bias = bias.shape[0] > 0
    cdef convx_epilogue epilogue
    cdef convx_epilogue* epi = _epilogue(activation, p0, p1, &epilogue)
    if _split_prefers(DW_FORWARD, &g, sizeof(floating) == 8) and _split_forward(x, weight, bias, out, &g, n_threads,
                                                                                 epi):
        _ran(OP_FORWARD, IMPL_DEPTHWISE_SPLIT, 0)
        return
    _ran(OP_FORWARD, IMPL_DEPTHWISE_DIRECT, 0)
    cdef Py_ssize_t[::1] ranges = _column_ranges(&g)
    with nogil:
        for item in prange(g.batch * c_out, schedule='static', num_threads=_team(n_threads, g.batch * c_out)):
            n = item // c_out
            co = item % c_out
            _direct_forward_plane(&x[n, co // g.c_out_g, 0, 0], &weight[co, 0, 0, 0],
                                  bias[co] if has_bias else 0, &out[n, co, 0, 0], &g,
                                  &ranges[0], &ranges[g.kernel_w])
            if epi != NULL:
                _activate(&out[n, co, 0, 0], g.out_h * g.out_w, epi)


def depthwise_backward_input(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] weight,
                             floating[:, :, :, ::1] grad_in,
                             int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                             int groups, int n_threads):
    """conv2d_backward_input for weight.shape[1] == 1, one thread per (n, input channel) plane."""
    cdef ConvGeometry g = _geometry(grad_in.shape[0], grad_in.shape[1], grad_in.shape[2], grad_in.shape[3],
                                    weight.shape[0], weight.shape[2], weight.shape[3],
                                    grad_out.shape[2], grad_out.shape[3], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t c_in = grad_in.shape[1]
    cdef Py_ssize_t item, n, ci
    cdef Py_ssize_t[::1] ranges = _column_ranges(&g)
    cdef const floating[:, :, :, ::1] rotated
    if _split_prefers(DW_INPUT, &g, sizeof(floating) == 8) and _split_input(grad_out, weight, grad_in, &g, n_threads):
        _ran(OP_INPUT, IMPL_DEPTHWISE_SPLIT, 0)
        return
    _ran(OP_INPUT, IMPL_DEPTHWISE_DIRECT, 0)
    if _rotated_applies(&g):
        rotated = np.ascontiguousarray(np.asarray(weight)[:, :, ::-1, ::-1])
        ranges = _rotated_ranges(&g)
        with nogil:
            for item in prange(g.batch * c_in, schedule='static', num_threads=_team(n_threads, g.batch * c_in)):
                n = item // c_in
                ci = item % c_in
                _rotated_input_plane(&grad_out[n, ci, 0, 0], &rotated[ci, 0, 0, 0], &grad_in[n, ci, 0, 0], &g,
                                     &ranges[0])
        return
    with nogil:
        for item in prange(g.batch * c_in, schedule='static', num_threads=_team(n_threads, g.batch * c_in)):
            n = item // c_in
            ci = item % c_in
            _direct_backward_input_plane(&grad_out[n, ci * g.c_out_g, 0, 0], &weight[ci * g.c_out_g, 0, 0, 0],
                                         &grad_in[n, ci, 0, 0], &g, &ranges[0], &ranges[g.kernel_w])


def depthwise_backward_weight(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                              floating[:, :, :, ::1] grad_weight,
                              int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                              int groups, int n_threads):
    """grad_weight[co, 0, i, j] = sum_n corr(grad_out[n, co], x[n, co // (C_out/groups)])[i, j]; overwritten.

    One thread per output channel: its planes' products are summed per output column (in a
    per-thread row for each tap) over the whole batch, and across the columns at the end.
    """
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], grad_weight.shape[0],
                                    grad_weight.shape[2], grad_weight.shape[3],
                                    grad_out.shape[2], grad_out.shape[3], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t c_out = grad_weight.shape[0]
    cdef Py_ssize_t taps = g.kernel_h * g.kernel_w
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t co, n, tid
    cdef floating* partial
    if _split_prefers(DW_WEIGHT, &g, sizeof(floating) == 8) and _split_weight(grad_out, x, grad_weight, &g, n_threads):
        _ran(OP_WEIGHT, IMPL_DEPTHWISE_SPLIT, 0)
        return
    _ran(OP_WEIGHT, IMPL_DEPTHWISE_DIRECT, 0)
    cdef int team = _team(n_threads, c_out)
    cdef Py_ssize_t[::1] ranges = _column_ranges(&g)
    # One row of out_w partial sums per tap and thread, each thread's on its own cache lines.
    cdef Py_ssize_t slot = (taps * g.out_w + 15) // 16 * 16 + 16
    cdef floating[::1] partials = np.empty(team * slot, dtype=np.asarray(grad_weight).dtype)
    # Planes of grad_out holding inf or NaN, whose products with the padding are NaN (each
    # checked right after its products, while it is in cache).
    cdef bint padded = _reaches_padding(&g)
    cdef unsigned char[::1] non_finite = np.zeros(g.batch * c_out if padded else 1, dtype=np.uint8)
    with nogil:
        with parallel(num_threads=team):
            tid = threadid()
            for co in prange(c_out, schedule='static'):
                partial = &partials[tid * slot]
                memset(partial, 0, taps * g.out_w * sizeof(floating))
                for n in range(g.batch):
                    # the next image's planes, a whole image apart: the hardware prefetcher does
                    # not cross to them
                    if n + 1 < g.batch:
                        convx_prefetch(&grad_out[n + 1, co, 0, 0], n_out * sizeof(floating))
                        convx_prefetch(&x[n + 1, co // g.c_out_g, 0, 0], g.height * g.width * sizeof(floating))
                    _direct_weight_plane(&grad_out[n, co, 0, 0], &x[n, co // g.c_out_g, 0, 0], partial, &g,
                                         &ranges[0], &ranges[g.kernel_w])
                    if padded:
                        non_finite[n * c_out + co] = not _all_finite(&grad_out[n, co, 0, 0], n_out)
                _direct_weight_finish(partial, &grad_out[0, co, 0, 0], c_out * n_out,
                                      &non_finite[co] if padded else NULL, c_out, &g, &grad_weight[co, 0, 0, 0])

