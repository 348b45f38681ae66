# 3-D pooling kernels (max, average, adaptive) over the (D, H, W) volumes of NCDHW arrays.
#
# Threads split the N*C volumes; each volume of an output (or of an input gradient) is written by
# one thread only, so results do not depend on the thread count. The max and average kernels
# sweep one output row (od, oh) at a time with the taps outside and the row's outputs inside: each
# output still meets its taps in window order (depth, rows, columns), so ties, NaN and summation
# order are those of the one-window-at-a-time loop, while the inner loop is a strided sweep over
# the outputs that a tap reaches inside the input (strides 1 and 2 as literals, which vectorise;
# without indices the max sweep is values only). Only taps inside the input are visited, so time
# does not grow with a window mostly in the padding. max_pool3d's backward is max_pool2d_backward on (D*H, W) views: its flat indices are the same.
#
# Every kernel takes a band [od_begin, od_end) of output depths, so that a huge volume is pooled by
# several calls (and Ctrl-C is seen between them). The backward kernels scatter, so the band that
# starts at depth 0 zeroes the input gradient first and the bands must run in order; each input
# element then takes its shares in the order one call would give them.


cdef struct Pool3dGeometry:
    Py_ssize_t depth, height, width, out_d, out_h, out_w
    Py_ssize_t kernel[3]
    Py_ssize_t stride[3]
    Py_ssize_t pad[3]          # before each axis: front, top, left
    Py_ssize_t pad_after[3]    # after it: back, bottom, right (only average pooling's divisor reads them)
    Py_ssize_t dilation[3]


cdef inline Py_ssize_t _first_reaching(Py_ssize_t offset, Py_ssize_t stride) noexcept nogil:
    """The first output o >= 0 whose tap o*stride + offset is >= 0."""
    if offset >= 0:
        return 0
    return (-offset + stride - 1) // stride


cdef inline Py_ssize_t _end_reaching(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                                     Py_ssize_t out_size) noexcept nogil:
    """One past the last output o < out_size whose tap o*stride + offset is < size (0 if none)."""
    if offset >= size:
        return 0
    return min(out_size, (size - 1 - offset) // stride + 1)


cdef inline Py_ssize_t _first_inside(Py_ssize_t start, Py_ssize_t dilation) noexcept nogil:
    """The first tap position start + i*dilation >= 0 (the validation keeps it inside the input)."""
    if start >= 0:
        return start
    return start + (-start + dilation - 1) // dilation * dilation


cdef inline void _max_sweep(const floating* src, floating* best, int64_t* at, Py_ssize_t lo, Py_ssize_t hi,
                            Py_ssize_t stride, int64_t position) noexcept nogil:
    """best[o] = src[o * stride] where that is larger or NaN, for lo <= o < hi, and at[o] = position +
    o * stride there (at NULL: the values only)."""
    cdef Py_ssize_t o
    cdef floating value
    cdef bint take
    # Selects, not branches: the compiler turns them into vector blends.
    if at == NULL:
        for o in range(lo, hi):
            value = src[o * stride]
            take = (value > best[o]) | (value != value)
            best[o] = value if take else best[o]
        return
    for o in range(lo, hi):
        value = src[o * stride]
        take = (value > best[o]) | (value != value)
        best[o] = value if take else best[o]
        at[o] = position + o * stride if take else at[o]


cdef inline void _taps_inside(Py_ssize_t start, Py_ssize_t size, Py_ssize_t kernel, Py_ssize_t dilation,
                              Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the taps t of a window starting at ``start`` with 0 <= start + t*dilation < size."""
    lo[0] = 0 if start >= 0 else (-start + dilation - 1) // dilation
    hi[0] = 0 if start >= size else min(kernel, (size - 1 - start) // dilation + 1)


cdef void _max_pool3d_volume(const floating* x, floating* y, int64_t* where, Pool3dGeometry* g,
                             Py_ssize_t od_begin, Py_ssize_t od_end) noexcept nogil:
    """y = max over each window (NaN wins), where (unless NULL) = its flat d*H*W + h*W + w.

    Only the taps inside the input are visited (time does not grow with a window mostly in the
    padding), the column taps limited to those that some output of the row reaches."""
    cdef Py_ssize_t od, oh, ow, a, b, c, d, h, offset, lo, hi, a_lo, a_hi, b_lo, b_hi, c_lo, c_hi, unused
    cdef Py_ssize_t plane = g.height * g.width
    cdef floating* best
    cdef int64_t* at = NULL
    cdef const floating* src
    cdef int64_t base
    # Column taps some output reaches: the last output's first one inside, the first output's last one.
    _taps_inside((g.out_w - 1) * g.stride[2] - g.pad[2], g.width, g.kernel[2], g.dilation[2], &c_lo, &unused)
    _taps_inside(-g.pad[2], g.width, g.kernel[2], g.dilation[2], &unused, &c_hi)
    for od in range(od_begin, od_end):
        _taps_inside(od * g.stride[0] - g.pad[0], g.depth, g.kernel[0], g.dilation[0], &a_lo, &a_hi)
        for oh in range(g.out_h):
            _taps_inside(oh * g.stride[1] - g.pad[1], g.height, g.kernel[1], g.dilation[1], &b_lo, &b_hi)
            best = y + (od * g.out_h + oh) * g.out_w
            for ow in range(g.out_w):
                best[ow] = -INFINITY
            if where != NULL:
                # Padding is -inf; a window of -inf only points at its first tap inside the input.
                at = where + (od * g.out_h + oh) * g.out_w
                base = (od * g.stride[0] - g.pad[0] + a_lo * g.dilation[0]) * plane + (
                    oh * g.stride[1] - g.pad[1] + b_lo * g.dilation[1]) * g.width
                for ow in range(g.out_w):
                    at[ow] = base + _first_inside(ow * g.stride[2] - g.pad[2], g.dilation[2])
            for a in range(a_lo, a_hi):
                d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
                for b in range(b_lo, b_hi):
                    h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                    base = d * plane + h * g.width
                    src = x + base
                    for c in range(c_lo, c_hi):
                        offset = c * g.dilation[2] - g.pad[2]
                        lo = _first_reaching(offset, g.stride[2])
                        hi = _end_reaching(offset, g.stride[2], g.width, g.out_w)
                        # The common strides as literals, so that the compiler vectorises the sweep.
                        if g.stride[2] == 1:
                            _max_sweep(src + offset, best, at, lo, hi, 1, base + offset)
                        elif g.stride[2] == 2:
                            _max_sweep(src + offset, best, at, lo, hi, 2, base + offset)
                        else:
                            _max_sweep(src + offset, best, at, lo, hi, g.stride[2], base + offset)


cdef Pool3dGeometry _pool3d_geometry(const Py_ssize_t* sizes, Py_ssize_t kernel_d, Py_ssize_t kernel_h,
                                     Py_ssize_t kernel_w, Py_ssize_t stride_d, Py_ssize_t stride_h,
                                     Py_ssize_t stride_w, Py_ssize_t pad_d, Py_ssize_t pad_h, Py_ssize_t pad_w,
                                     Py_ssize_t dilation_d, Py_ssize_t dilation_h, Py_ssize_t dilation_w) noexcept nogil:
    cdef Pool3dGeometry g
    g.depth, g.height, g.width, g.out_d, g.out_h, g.out_w = sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]
    g.kernel[0], g.kernel[1], g.kernel[2] = kernel_d, kernel_h, kernel_w
    g.stride[0], g.stride[1], g.stride[2] = stride_d, stride_h, stride_w
    g.pad[0], g.pad[1], g.pad[2] = pad_d, pad_h, pad_w
    g.pad_after[0], g.pad_after[1], g.pad_after[2] = pad_d, pad_h, pad_w
    g.dilation[0], g.dilation[1], g.dilation[2] = dilation_d, dilation_h, dilation_w
    return g


def max_pool3d_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                       int64_t[:, :, :, :, ::1] indices, Py_ssize_t kernel_d, Py_ssize_t kernel_h,
                       Py_ssize_t kernel_w, Py_ssize_t stride_d, Py_ssize_t stride_h, Py_ssize_t stride_w,
                       Py_ssize_t pad_d, Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t dilation_d,
                       Py_ssize_t dilation_h, Py_ssize_t dilation_w, Py_ssize_t od_begin, Py_ssize_t od_end,
                       int n_threads):
    """out[n, c, od, oh, ow] = max_{a, b, c} x_(-inf)-padded[n, c, od*sd + a*dd, oh*sh + b*dh, ow*sw + c*dw]
    (NaN wins), indices = its flat d*H*W + h*W + w, for od in [od_begin, od_end); a zero-batch
    ``indices`` skips them."""
    cdef Py_ssize_t[6] dims = [x.shape[2], x.shape[3], x.shape[4], out.shape[2], out.shape[3], out.shape[4]]
    cdef Pool3dGeometry g = _pool3d_geometry(dims, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w,
                                             pad_d, pad_h, pad_w, dilation_d, dilation_h, dilation_w)
    cdef Py_ssize_t n_volumes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t volume = g.depth * g.height * g.width, out_volume = g.out_d * g.out_h * g.out_w
    cdef int team = _team_size(n_threads, n_volumes, volume + out_volume)
    cdef bint want_indices = indices.shape[0] > 0
    cdef Py_ssize_t p
    with nogil:
        for p in prange(n_volumes, schedule='static', num_threads=team):
            _max_pool3d_volume(&x[0, 0, 0, 0, 0] + p * volume, &out[0, 0, 0, 0, 0] + p * out_volume,
                               &indices[0, 0, 0, 0, 0] + p * out_volume if want_indices else NULL, &g, od_begin,
                               od_end)


cdef inline Py_ssize_t _avg_extent(Py_ssize_t start, Py_ssize_t size, Py_ssize_t kernel, Py_ssize_t pad,
                                   Py_ssize_t pad_after, Py_ssize_t dilation, bint count_include_pad) noexcept nogil:
    """Taps of a window starting at ``start`` counted by the divisor: inside the padded input
    [-pad, size + pad_after), or the input."""
    cdef Py_ssize_t lo, hi
    if count_include_pad:
        # start >= -pad always; a ceil_mode window is clipped at size + pad_after
        _taps_inside(start + pad, size + pad + pad_after, kernel, dilation, &lo, &hi)
    else:
        _taps_inside(start, size, kernel, dilation, &lo, &hi)
    return max(0, hi - lo)


cdef void _avg_divisors3d(Pool3dGeometry* g, bint count_include_pad, Py_ssize_t divisor_override,
                          Py_ssize_t* divisors) noexcept nogil:
    """The divisor of every output along each axis: out_d, then out_h, then out_w of them (products
    of the three give a window's), or divisor_override along depth and ones elsewhere."""
    cdef Py_ssize_t axis, o, offset = 0
    cdef Py_ssize_t[3] sizes = [g.depth, g.height, g.width]
    cdef Py_ssize_t[3] outs = [g.out_d, g.out_h, g.out_w]
    for axis in range(3):
        for o in range(outs[axis]):
            if divisor_override > 0:
                divisors[offset + o] = divisor_override if axis == 0 else 1
            else:
                divisors[offset + o] = _avg_extent(o * g.stride[axis] - g.pad[axis], sizes[axis], g.kernel[axis],
                                                   g.pad[axis], g.pad_after[axis], g.dilation[axis],
                                                   count_include_pad)
        offset += outs[axis]


cdef void _avg_pool3d_volume(const floating* x, floating* y, Pool3dGeometry* g, const Py_ssize_t* divisors,
                             Py_ssize_t od_begin, Py_ssize_t od_end) noexcept nogil:
    """y = sum of each window's taps inside the input / its divisor (only those taps visited)."""
    cdef Py_ssize_t od, oh, ow, a, b, c, d, h, offset, lo, hi, a_lo, a_hi, b_lo, b_hi, c_lo, c_hi, unused
    cdef Py_ssize_t plane = g.height * g.width
    cdef floating* total
    cdef const floating* src
    cdef Py_ssize_t row_divisor
    _taps_inside((g.out_w - 1) * g.stride[2] - g.pad[2], g.width, g.kernel[2], g.dilation[2], &c_lo, &unused)
    _taps_inside(-g.pad[2], g.width, g.kernel[2], g.dilation[2], &unused, &c_hi)
    for od in range(od_begin, od_end):
        _taps_inside(od * g.stride[0] - g.pad[0], g.depth, g.kernel[0], g.dilation[0], &a_lo, &a_hi)
        for oh in range(g.out_h):
            _taps_inside(oh * g.stride[1] - g.pad[1], g.height, g.kernel[1], g.dilation[1], &b_lo, &b_hi)
            total = y + (od * g.out_h + oh) * g.out_w
            for ow in range(g.out_w):
                total[ow] = 0
            for a in range(a_lo, a_hi):
                d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
                for b in range(b_lo, b_hi):
                    h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                    src = x + d * plane + h * g.width
                    for c in range(c_lo, c_hi):
                        offset = c * g.dilation[2] - g.pad[2]
                        lo = _first_reaching(offset, g.stride[2])
                        hi = _end_reaching(offset, g.stride[2], g.width, g.out_w)
                        for ow in range(lo, hi):
                            total[ow] = total[ow] + src[ow * g.stride[2] + offset]
            row_divisor = divisors[od] * divisors[g.out_d + oh]
            for ow in range(g.out_w):
                total[ow] = total[ow] / <floating> (row_divisor * divisors[g.out_d + g.out_h + ow])


def avg_pool3d_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                       Py_ssize_t kernel_d, Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_d,
                       Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t pad_d, Py_ssize_t pad_h, Py_ssize_t pad_w,
                       Py_ssize_t pad_back, Py_ssize_t pad_bottom, Py_ssize_t pad_right,
                       Py_ssize_t dilation_d, Py_ssize_t dilation_h, Py_ssize_t dilation_w, bint count_include_pad,
                       Py_ssize_t divisor_override, Py_ssize_t od_begin, Py_ssize_t od_end, int n_threads):
    """out[n, c, od, oh, ow] = sum_{a, b, c} x_zero_padded[n, c, od*sd + a*dd, oh*sh + b*dh, ow*sw + c*dw] / divisor
    (divisor_override when positive, else the window's taps in the input padded by pad_d/h/w before and
    pad_back/bottom/right after, or in the input), for od in [od_begin, od_end)."""
    cdef Py_ssize_t[6] dims = [x.shape[2], x.shape[3], x.shape[4], out.shape[2], out.shape[3], out.shape[4]]
    cdef Pool3dGeometry g = _pool3d_geometry(dims, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w,
                                             pad_d, pad_h, pad_w, dilation_d, dilation_h, dilation_w)
    cdef Py_ssize_t n_volumes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t volume = g.depth * g.height * g.width, out_volume = g.out_d * g.out_h * g.out_w
    g.pad_after[0], g.pad_after[1], g.pad_after[2] = pad_back, pad_bottom, pad_right
    cdef Py_ssize_t[::1] divisors = np.empty(g.out_d + g.out_h + g.out_w, dtype=np.intp)
    _avg_divisors3d(&g, count_include_pad, divisor_override, &divisors[0])
    cdef Py_ssize_t p
    with nogil:
        for p in prange(n_volumes, schedule='static',
                        num_threads=_team_size(n_threads, n_volumes, volume + out_volume)):
            _avg_pool3d_volume(&x[0, 0, 0, 0, 0] + p * volume, &out[0, 0, 0, 0, 0] + p * out_volume, &g,
                               &divisors[0], od_begin, od_end)


cdef void _avg_pool3d_backward_volume(const floating* grad_out, floating* grad_in, floating* share,
                                      Pool3dGeometry* g, const Py_ssize_t* divisors, Py_ssize_t od_begin,
                                      Py_ssize_t od_end) noexcept nogil:
    """grad_in = every window's grad_out / divisor added to its taps inside the input (share: one row)."""
    cdef Py_ssize_t od, oh, ow, a, b, c, d, h, offset, lo, hi, a_lo, a_hi, b_lo, b_hi, c_lo, c_hi, unused
    cdef Py_ssize_t plane = g.height * g.width
    cdef const floating* src
    cdef floating* dst
    cdef Py_ssize_t row_divisor
    if od_begin == 0:
        memset(grad_in, 0, g.depth * plane * sizeof(floating))
    _taps_inside((g.out_w - 1) * g.stride[2] - g.pad[2], g.width, g.kernel[2], g.dilation[2], &c_lo, &unused)
    _taps_inside(-g.pad[2], g.width, g.kernel[2], g.dilation[2], &unused, &c_hi)
    for od in range(od_begin, od_end):
        _taps_inside(od * g.stride[0] - g.pad[0], g.depth, g.kernel[0], g.dilation[0], &a_lo, &a_hi)
        for oh in range(g.out_h):
            _taps_inside(oh * g.stride[1] - g.pad[1], g.height, g.kernel[1], g.dilation[1], &b_lo, &b_hi)
            src = grad_out + (od * g.out_h + oh) * g.out_w
            row_divisor = divisors[od] * divisors[g.out_d + oh]
            for ow in range(g.out_w):
                share[ow] = src[ow] / <floating> (row_divisor * divisors[g.out_d + g.out_h + ow])
            for a in range(a_lo, a_hi):
                d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
                for b in range(b_lo, b_hi):
                    h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                    dst = grad_in + d * plane + h * g.width
                    for c in range(c_lo, c_hi):
                        offset = c * g.dilation[2] - g.pad[2]
                        lo = _first_reaching(offset, g.stride[2])
                        hi = _end_reaching(offset, g.stride[2], g.width, g.out_w)
                        for ow in range(lo, hi):
                            dst[ow * g.stride[2] + offset] += share[ow]


def avg_pool3d_backward(const floating[:, :, :, :, ::1] grad_out, floating[:, :, :, :, ::1] grad_in,
                        Py_ssize_t kernel_d, Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t stride_d,
                        Py_ssize_t stride_h, Py_ssize_t stride_w, Py_ssize_t pad_d, Py_ssize_t pad_h, Py_ssize_t pad_w,
                       Py_ssize_t pad_back, Py_ssize_t pad_bottom, Py_ssize_t pad_right,
                        Py_ssize_t dilation_d, Py_ssize_t dilation_h, Py_ssize_t dilation_w, bint count_include_pad,
                        Py_ssize_t divisor_override, Py_ssize_t od_begin, Py_ssize_t od_end, int n_threads):
    """grad_in[n, c, d, h, w] += grad_out / divisor of each window over (d, h, w) with od in [od_begin, od_end);
    grad_in is zeroed first where od_begin is 0."""
    cdef Py_ssize_t[6] dims = [grad_in.shape[2], grad_in.shape[3], grad_in.shape[4],
                               grad_out.shape[2], grad_out.shape[3], grad_out.shape[4]]
    cdef Pool3dGeometry g = _pool3d_geometry(dims, kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w,
                                             pad_d, pad_h, pad_w, dilation_d, dilation_h, dilation_w)
    cdef Py_ssize_t n_volumes = grad_in.shape[0] * grad_in.shape[1]
    cdef Py_ssize_t volume = g.depth * g.height * g.width, out_volume = g.out_d * g.out_h * g.out_w
    g.pad_after[0], g.pad_after[1], g.pad_after[2] = pad_back, pad_bottom, pad_right
    cdef Py_ssize_t[::1] divisors = np.empty(g.out_d + g.out_h + g.out_w, dtype=np.intp)
    _avg_divisors3d(&g, count_include_pad, divisor_override, &divisors[0])
    cdef int team = _team_size(n_threads, n_volumes, volume + out_volume)
    cdef floating[::1] shares = np.empty(team * g.out_w, dtype=np.float32 if floating is float else np.float64)
    cdef Py_ssize_t p, tid
    with nogil, parallel(num_threads=team):
        tid = threadid()
        for p in prange(n_volumes, schedule='static'):
            _avg_pool3d_backward_volume(&grad_out[0, 0, 0, 0, 0] + p * out_volume,
                                        &grad_in[0, 0, 0, 0, 0] + p * volume, &shares[tid * g.out_w], &g,
                                        &divisors[0], od_begin, od_end)


cdef inline void _adaptive_range(Py_ssize_t index, Py_ssize_t size, Py_ssize_t out_size, Py_ssize_t* start,
                                 Py_ssize_t* end) noexcept nogil:
    """[floor(index*size/out_size), ceil((index+1)*size/out_size))."""
    start[0] = index * size // out_size
    end[0] = ((index + 1) * size + out_size - 1) // out_size


cdef void _adaptive_avg3d_volume(const floating* x, floating* y, const Py_ssize_t* dims, Py_ssize_t od_begin,
                                 Py_ssize_t od_end) noexcept nogil:
    cdef Py_ssize_t od, oh, ow, d, h, w, d0, d1, h0, h1, w0, w1
    cdef Py_ssize_t plane = dims[1] * dims[2]
    cdef floating total
    for od in range(od_begin, od_end):
        _adaptive_range(od, dims[0], dims[3], &d0, &d1)
        for oh in range(dims[4]):
            _adaptive_range(oh, dims[1], dims[4], &h0, &h1)
            for ow in range(dims[5]):
                _adaptive_range(ow, dims[2], dims[5], &w0, &w1)
                total = 0
                for d in range(d0, d1):
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            total = total + x[d * plane + h * dims[2] + w]
                # Three divisions, in PyTorch's order.
                y[(od * dims[4] + oh) * dims[5] + ow] = (total / <floating> (d1 - d0) / <floating> (h1 - h0)
                                                         / <floating> (w1 - w0))


def adaptive_avg_pool3d_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                                Py_ssize_t od_begin, Py_ssize_t od_end, int n_threads):
    """out[n, c, od, oh, ow] = sum over window (od, oh, ow) of x / window_d / window_h / window_w, for od in
    [od_begin, od_end)."""
    cdef Py_ssize_t[6] dims = [x.shape[2], x.shape[3], x.shape[4], out.shape[2], out.shape[3], out.shape[4]]
    cdef Py_ssize_t n_volumes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t volume = dims[0] * dims[1] * dims[2], out_volume = dims[3] * dims[4] * dims[5]
    cdef Py_ssize_t p
    with nogil:
        for p in prange(n_volumes, schedule='static',
                        num_threads=_team_size(n_threads, n_volumes, volume + out_volume)):
            _adaptive_avg3d_volume(&x[0, 0, 0, 0, 0] + p * volume, &out[0, 0, 0, 0, 0] + p * out_volume, dims,
                                   od_begin, od_end)


cdef void _adaptive_avg3d_backward_volume(const floating* grad_out, floating* grad_in, const Py_ssize_t* dims,
                                          Py_ssize_t od_begin, Py_ssize_t od_end) noexcept nogil:
    cdef Py_ssize_t od, oh, ow, d, h, w, d0, d1, h0, h1, w0, w1
    cdef Py_ssize_t plane = dims[1] * dims[2]
    cdef floating share
    if od_begin == 0:
        memset(grad_in, 0, dims[0] * plane * sizeof(floating))
    for od in range(od_begin, od_end):
        _adaptive_range(od, dims[0], dims[3], &d0, &d1)
        for oh in range(dims[4]):
            _adaptive_range(oh, dims[1], dims[4], &h0, &h1)
            for ow in range(dims[5]):
                _adaptive_range(ow, dims[2], dims[5], &w0, &w1)
                share = (grad_out[(od * dims[4] + oh) * dims[5] + ow] / <floating> (d1 - d0)
                         / <floating> (h1 - h0) / <floating> (w1 - w0))
                for d in range(d0, d1):
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            grad_in[d * plane + h * dims[2] + w] += share


def adaptive_avg_pool3d_backward(const floating[:, :, :, :, ::1] grad_out, floating[:, :, :, :, ::1] grad_in,
                                 Py_ssize_t od_begin, Py_ssize_t od_end, int n_threads):
    """grad_in[n, c, d, h, w] += grad_out / window volume of each window over (d, h, w) with od in
    [od_begin, od_end); grad_in is zeroed first where od_begin is 0."""
    cdef Py_ssize_t[6] dims = [grad_in.shape[2], grad_in.shape[3], grad_in.shape[4],
                               grad_out.shape[2], grad_out.shape[3], grad_out.shape[4]]
    cdef Py_ssize_t n_volumes = grad_in.shape[0] * grad_in.shape[1]
    cdef Py_ssize_t volume = dims[0] * dims[1] * dims[2], out_volume = dims[3] * dims[4] * dims[5]
    cdef Py_ssize_t p
    with nogil:
        for p in prange(n_volumes, schedule='static',
                        num_threads=_team_size(n_threads, n_volumes, volume + out_volume)):
            _adaptive_avg3d_backward_volume(&grad_out[0, 0, 0, 0, 0] + p * out_volume,
                                            &grad_in[0, 0, 0, 0, 0] + p * volume, dims, od_begin, od_end)


cdef void _adaptive_max3d_volume(const floating* x, floating* y, int64_t* where, const Py_ssize_t* dims,
                                 Py_ssize_t od_begin, Py_ssize_t od_end) noexcept nogil:
    cdef Py_ssize_t od, oh, ow, d, h, w, d0, d1, h0, h1, w0, w1, o
    cdef Py_ssize_t plane = dims[1] * dims[2]
    cdef floating best, value
    cdef int64_t at
    for od in range(od_begin, od_end):
        _adaptive_range(od, dims[0], dims[3], &d0, &d1)
        for oh in range(dims[4]):
            _adaptive_range(oh, dims[1], dims[4], &h0, &h1)
            for ow in range(dims[5]):
                _adaptive_range(ow, dims[2], dims[5], &w0, &w1)
                best = -INFINITY
                at = d0 * plane + h0 * dims[2] + w0
                for d in range(d0, d1):
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            value = x[d * plane + h * dims[2] + w]
                            if value > best or value != value:
                                best = value
                                at = d * plane + h * dims[2] + w
                o = (od * dims[4] + oh) * dims[5] + ow
                y[o] = best
                if where != NULL:
                    where[o] = at


def adaptive_max_pool3d_forward(const floating[:, :, :, :, ::1] x, floating[:, :, :, :, ::1] out,
                                int64_t[:, :, :, :, ::1] indices, Py_ssize_t od_begin, Py_ssize_t od_end,
                                int n_threads):
    """out[n, c, od, oh, ow] = max over window (od, oh, ow) of x (NaN wins), indices = its flat
    d*H*W + h*W + w, for od in [od_begin, od_end); a zero-batch ``indices`` skips them."""
    cdef Py_ssize_t[6] dims = [x.shape[2], x.shape[3], x.shape[4], out.shape[2], out.shape[3], out.shape[4]]
    cdef Py_ssize_t n_volumes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t volume = dims[0] * dims[1] * dims[2], out_volume = dims[3] * dims[4] * dims[5]
    cdef bint want_indices = indices.shape[0] > 0
    cdef Py_ssize_t p
    with nogil:
        for p in prange(n_volumes, schedule='static',
                        num_threads=_team_size(n_threads, n_volumes, volume + out_volume)):
            _adaptive_max3d_volume(&x[0, 0, 0, 0, 0] + p * volume, &out[0, 0, 0, 0, 0] + p * out_volume,
                                   &indices[0, 0, 0, 0, 0] + p * out_volume if want_indices else NULL, dims,
                                   od_begin, od_end)
