# 3-D convolution kernels over NCDHW volumes: Caffe's scheme with the depth among the taps.
#
# A tile is a band of output voxels of one image: output rows r = od * H_out + oh in [r0, r1),
# every column of them (or, where one row's column matrix alone would exceed COL_BUDGET, a part
# of one row's columns). vol2col unfolds the tile into a column matrix of (C_in/groups * kD*kH*kW)
# rows in a per-thread buffer, so that scratch is bounded whatever the batch or volume; the
# forward is W_grp @ col, the input gradient col2vol(W_grp^T @ grad_out), the weight gradient
# grad_out @ col^T summed in per-thread partials that are added up after the parallel block.
# A 1x1x1 kernel with stride 1 and no padding reads the input volume as its column matrix.
#
# Every entry point takes a range [row_begin, row_end) of output rows, so that the public ops
# split a huge volume into several calls (and Ctrl-C is seen between them). The input and weight
# gradients add into their outputs (which the caller zeroes once): each band adds its share.
#
# The products are convx's packed GEMM (_gemm.h) where _level() picks it, else BLAS; the weight
# gradient's products are BLAS's at every level (as the 2-D im2col tiles').

cdef struct Conv3dGeometry:
    Py_ssize_t groups, c_in_g, c_out_g
    Py_ssize_t depth, height, width, out_d, out_h, out_w
    Py_ssize_t kernel[3]
    Py_ssize_t stride[3]
    Py_ssize_t pad[3]
    Py_ssize_t dilation[3]
    Py_ssize_t taps          # kD * kH * kW
    Py_ssize_t col_rows      # c_in_g * taps
    Py_ssize_t volume        # D * H * W
    Py_ssize_t n_out         # D_out * H_out * W_out
    Py_ssize_t band_rows     # output rows per tile
    Py_ssize_t band_cols     # output columns per tile (out_w unless band_rows is 1)
    bint direct_1x1          # the input volume is already the column matrix


cdef struct Product3d:
    # rows [row0, row0 + m) of op(W_grp) @ B for each group: op(W) = W (k = col_rows) or W^T
    # (k = c_out_g), W the weight as (C_out, col_rows) row-major. With level CONVX_GEMM_BLAS from
    # weight, else from packed: the rows of part q of group grp at packed + (grp * parts + q) * slot.
    int level
    bint transpose
    Py_ssize_t k, col_rows, group_elements, parts, slot
    const void* weight
    void* packed


cdef Conv3dGeometry _conv3d_geometry(Py_ssize_t c_in, Py_ssize_t depth, Py_ssize_t height, Py_ssize_t width,
                                     Py_ssize_t c_out, Py_ssize_t kernel_d, Py_ssize_t kernel_h, Py_ssize_t kernel_w,
                                     Py_ssize_t out_d, Py_ssize_t out_h, Py_ssize_t out_w, int groups,
                                     int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w,
                                     int dilation_d, int dilation_h, int dilation_w) noexcept nogil:
    cdef Conv3dGeometry g
    g.groups = groups
    g.c_in_g = c_in // groups
    g.c_out_g = c_out // groups
    g.depth = depth
    g.height = height
    g.width = width
    g.out_d = out_d
    g.out_h = out_h
    g.out_w = out_w
    g.kernel[0] = kernel_d
    g.kernel[1] = kernel_h
    g.kernel[2] = kernel_w
    g.stride[0] = stride_d
    g.stride[1] = stride_h
    g.stride[2] = stride_w
    g.pad[0] = pad_d
    g.pad[1] = pad_h
    g.pad[2] = pad_w
    g.dilation[0] = dilation_d
    g.dilation[1] = dilation_h
    g.dilation[2] = dilation_w
    g.taps = kernel_d * kernel_h * kernel_w
    g.col_rows = g.c_in_g * g.taps
    g.volume = depth * height * width
    g.n_out = out_d * out_h * out_w
    g.direct_1x1 = (g.taps == 1 and stride_d == 1 and stride_h == 1 and stride_w == 1 and pad_d == 0
                    and pad_h == 0 and pad_w == 0 and out_d == depth and out_h == height and out_w == width)
    g.band_rows = 1
    g.band_cols = out_w
    return g


cdef void _conv3d_bands(Conv3dGeometry* g, Py_ssize_t n_images, Py_ssize_t n_rows, int n_threads) noexcept nogil:
    """Tiles of at most COL_BUDGET column elements (a 1x1x1 direct tile: the whole range), cut
    further where n_threads is given (> 0) so that n_images images give every thread a tile."""
    cdef Py_ssize_t want
    g.band_rows = max(1, n_rows)
    g.band_cols = g.out_w
    if not g.direct_1x1 and g.col_rows * g.out_w * g.band_rows > COL_BUDGET:
        g.band_rows = max(1, COL_BUDGET // max(1, g.col_rows * g.out_w))
        if g.col_rows * g.out_w > COL_BUDGET:
            g.band_cols = max(1, COL_BUDGET // g.col_rows)
    if n_threads > 0 and n_images < n_threads and g.band_cols == g.out_w:
        want = (n_threads + n_images - 1) // n_images
        g.band_rows = min(g.band_rows, max(1, (n_rows + want - 1) // want))


cdef inline Py_ssize_t _n_tiles3d(Conv3dGeometry* g, Py_ssize_t row_begin, Py_ssize_t row_end) noexcept nogil:
    """Tiles of one image's output rows [row_begin, row_end)."""
    return ((row_end - row_begin + g.band_rows - 1) // g.band_rows) * ((g.out_w + g.band_cols - 1) // g.band_cols)


cdef inline void _tile3d(Conv3dGeometry* g, Py_ssize_t tile, Py_ssize_t row_begin, Py_ssize_t row_end,
                         Py_ssize_t* r0, Py_ssize_t* r1, Py_ssize_t* c0, Py_ssize_t* c1) noexcept nogil:
    """The output rows [r0, r1) and columns [c0, c1) of tile number ``tile`` (row-major over the range)."""
    cdef Py_ssize_t per_row = (g.out_w + g.band_cols - 1) // g.band_cols
    r0[0] = row_begin + (tile // per_row) * g.band_rows
    r1[0] = min(r0[0] + g.band_rows, row_end)
    c0[0] = (tile % per_row) * g.band_cols
    c1[0] = min(c0[0] + g.band_cols, g.out_w)


cdef inline Py_ssize_t _col_size3d(Conv3dGeometry* g) noexcept nogil:
    if g.direct_1x1:
        return 1
    return g.col_rows * g.band_rows * g.band_cols


cdef void _vol2col(const floating* image, Conv3dGeometry* g, Py_ssize_t channels, Py_ssize_t r0, Py_ssize_t r1,
                   Py_ssize_t c0, Py_ssize_t c1, floating* col) noexcept nogil:
    """col[(c, a, b, e), (r - r0) * (c1 - c0) + ow - c0] = image[c, od*sD - pD + a*dD, oh*sH - pH + b*dH,
    ow*sW - pW + e*dW] (0 outside) for r = od*H_out + oh in [r0, r1), ow in [c0, c1), c < channels."""
    cdef Py_ssize_t n = c1 - c0, ld = (r1 - r0) * (c1 - c0)
    cdef Py_ssize_t c, a, b, e, r, od, oh, in_d, in_h, iw0, lo, hi, ow
    cdef Py_ssize_t sw = g.stride[2]
    cdef floating* dst
    cdef const floating* src
    for c in range(channels):
        for a in range(g.kernel[0]):
            for b in range(g.kernel[1]):
                for e in range(g.kernel[2]):
                    iw0 = e * g.dilation[2] - g.pad[2]
                    _valid_range(iw0, sw, g.width, g.out_w, &lo, &hi)
                    _clip_range(c0, c1, &lo, &hi)
                    dst = col + (((c * g.kernel[0] + a) * g.kernel[1] + b) * g.kernel[2] + e) * ld
                    od = r0 // g.out_h
                    oh = r0 - od * g.out_h
                    for r in range(r0, r1):
                        in_d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
                        in_h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                        if in_d < 0 or in_d >= g.depth or in_h < 0 or in_h >= g.height:
                            memset(dst, 0, n * sizeof(floating))
                        else:
                            # output column c0 + ow reads src[ow * stride_w]
                            src = image + ((c * g.depth + in_d) * g.height + in_h) * g.width + iw0 + c0 * sw
                            for ow in range(lo):
                                dst[ow] = 0
                            if sw == 1:
                                for ow in range(lo, hi):
                                    dst[ow] = src[ow]
                            elif sw == 2:
                                # A literal stride lets the compiler vectorise the gather.
                                for ow in range(lo, hi):
                                    dst[ow] = src[2 * ow]
                            else:
                                for ow in range(lo, hi):
                                    dst[ow] = src[ow * sw]
                            for ow in range(hi, n):
                                dst[ow] = 0
                        dst += n
                        oh = oh + 1
                        if oh == g.out_h:
                            oh = 0
                            od = od + 1


cdef void _col2vol(const floating* col, Conv3dGeometry* g, Py_ssize_t channels, Py_ssize_t r0, Py_ssize_t r1,
                   Py_ssize_t c0, Py_ssize_t c1, floating* image) noexcept nogil:
    """image[c, od*sD - pD + a*dD, oh*sH - pH + b*dH, ow*sW - pW + e*dW] += col[(c, a, b, e), ...]
    (the adjoint of _vol2col, same arguments)."""
    cdef Py_ssize_t n = c1 - c0, ld = (r1 - r0) * (c1 - c0)
    cdef Py_ssize_t c, a, b, e, r, od, oh, in_d, in_h, iw0, lo, hi, ow
    cdef Py_ssize_t sw = g.stride[2]
    cdef const floating* src
    cdef floating* dst
    for c in range(channels):
        for a in range(g.kernel[0]):
            for b in range(g.kernel[1]):
                for e in range(g.kernel[2]):
                    iw0 = e * g.dilation[2] - g.pad[2]
                    _valid_range(iw0, sw, g.width, g.out_w, &lo, &hi)
                    _clip_range(c0, c1, &lo, &hi)
                    src = col + (((c * g.kernel[0] + a) * g.kernel[1] + b) * g.kernel[2] + e) * ld
                    od = r0 // g.out_h
                    oh = r0 - od * g.out_h
                    for r in range(r0, r1):
                        in_d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
                        in_h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                        if in_d >= 0 and in_d < g.depth and in_h >= 0 and in_h < g.height:
                            dst = image + ((c * g.depth + in_d) * g.height + in_h) * g.width + iw0 + c0 * sw
                            if sw == 1:
                                for ow in range(lo, hi):
                                    dst[ow] += src[ow]
                            elif sw == 2:
                                for ow in range(lo, hi):
                                    dst[2 * ow] += src[ow]
                            else:
                                for ow in range(lo, hi):
                                    dst[ow * sw] += src[ow]
                        src += n
                        oh = oh + 1
                        if oh == g.out_h:
                            oh = 0
                            od = od + 1


cdef object _pack3d(const floating[:, ::1] weight, Conv3dGeometry* g, bint transpose, Py_ssize_t parts,
                    Product3d* p):
    """Fill p for op(W) of each group of weight (C_out, col_rows), W^T cut into ``parts`` near-equal
    ranges of input channels (_channel_part); returns the array holding the packing, which must
    outlive every use of p."""
    cdef Py_ssize_t grp, q, ch0, ch1, most
    cdef floating[::1] packed
    cdef const floating* w = &weight[0, 0] if weight.shape[0] and weight.shape[1] else NULL
    p.level = _level()
    p.transpose = transpose
    p.k = g.c_out_g if transpose else g.col_rows
    p.col_rows = g.col_rows
    p.group_elements = g.c_out_g * g.col_rows
    p.parts = parts if transpose else 1
    p.slot = 0
    p.weight = w
    p.packed = NULL
    if p.level == CONVX_GEMM_BLAS or p.group_elements == 0:
        p.level = CONVX_GEMM_BLAS
        return None
    most = ((g.c_in_g + p.parts - 1) // p.parts) * g.taps if transpose else g.c_out_g
    if floating is float:
        p.slot = convx_gemm_packed_size_f(p.level, most, p.k)
    else:
        p.slot = convx_gemm_packed_size_d(p.level, most, p.k)
    packed = np.empty(max(1, g.groups * p.parts * p.slot), dtype=np.asarray(weight).dtype)
    with nogil:
        for grp in range(g.groups):
            for q in range(p.parts):
                if transpose:
                    # W^T's element (r, j) is w_grp[r + j * col_rows]
                    _channel_part(g, p.parts, q, &ch0, &ch1)
                    if ch1 == ch0:
                        continue
                    if floating is float:
                        convx_gemm_pack_a_f(p.level, (ch1 - ch0) * g.taps, p.k, w + grp * p.group_elements + ch0 * g.taps,
                                            1, g.col_rows, &packed[(grp * p.parts + q) * p.slot])
                    else:
                        convx_gemm_pack_a_d(p.level, (ch1 - ch0) * g.taps, p.k, w + grp * p.group_elements + ch0 * g.taps,
                                            1, g.col_rows, &packed[(grp * p.parts + q) * p.slot])
                elif floating is float:
                    convx_gemm_pack_a_f(p.level, g.c_out_g, p.k, w + grp * p.group_elements, g.col_rows, 1,
                                        &packed[grp * p.slot])
                else:
                    convx_gemm_pack_a_d(p.level, g.c_out_g, p.k, w + grp * p.group_elements, g.col_rows, 1,
                                        &packed[grp * p.slot])
    p.packed = &packed[0]
    return packed


cdef inline void _channel_part(Conv3dGeometry* g, Py_ssize_t parts, Py_ssize_t q, Py_ssize_t* ch0,
                               Py_ssize_t* ch1) noexcept nogil:
    """[ch0, ch1): part q of parts near-equal ranges of a group's input channels."""
    ch0[0] = q * g.c_in_g // parts
    ch1[0] = (q + 1) * g.c_in_g // parts


cdef inline Py_ssize_t _product3d_work(Product3d* p, bint is_float) noexcept nogil:
    """Scratch elements one thread needs for _product3d."""
    if p.level == CONVX_GEMM_BLAS:
        return 1
    if is_float:
        return convx_gemm_work_size_f(p.level)
    return convx_gemm_work_size_d(p.level)


cdef inline void _product3d(Product3d* p, Py_ssize_t grp, Py_ssize_t q, Py_ssize_t row0, Py_ssize_t m, Py_ssize_t n,
                            const floating* b, Py_ssize_t ldb, floating* c, Py_ssize_t ldc, bint accumulate,
                            floating* work) noexcept nogil:
    """C (m x n, row stride ldc) (+)= rows [row0, row0 + m) of op(W_grp) @ B (p.k x n, row stride ldb),
    those rows being part q's (row0 0 for op(W) = W)."""
    cdef const floating* w = <const floating*> p.weight + grp * p.group_elements
    cdef floating beta = 1 if accumulate else 0
    if m == 0 or n == 0:
        return
    if p.level == CONVX_GEMM_BLAS:
        if p.transpose:
            _gemm(True, False, m, n, p.k, 1, w + row0, p.col_rows, b, ldb, beta, c, ldc)
        else:
            _gemm(False, False, m, n, p.k, 1, w + row0 * p.col_rows, p.col_rows, b, ldb, beta, c, ldc)
    elif floating is float:
        convx_gemm_f(p.level, m, n, p.k, <const float*> p.packed + (grp * p.parts + q) * p.slot, b, ldb, c, ldc,
                     accumulate, work)
    else:
        convx_gemm_d(p.level, m, n, p.k, <const double*> p.packed + (grp * p.parts + q) * p.slot, b, ldb, c, ldc,
                     accumulate, work)


cdef void _forward_tile3d(const floating* x, Product3d* p, const floating* bias, floating* out, Conv3dGeometry* g,
                          Py_ssize_t tile, Py_ssize_t row_begin, Py_ssize_t row_end, floating* col,
                          floating* work) noexcept nogil:
    """out[co, tile] = bias[co] + W_grp @ vol2col(x[grp], tile) for one image's tile and every group."""
    cdef Py_ssize_t r0, r1, c0, c1, n, grp, co, i, offset
    cdef floating* dst
    cdef floating value
    _tile3d(g, tile, row_begin, row_end, &r0, &r1, &c0, &c1)
    n = (r1 - r0) * (c1 - c0)
    offset = r0 * g.out_w + c0
    for grp in range(g.groups):
        if g.direct_1x1:
            _product3d(p, grp, 0, 0, g.c_out_g, n, x + grp * g.c_in_g * g.volume + offset, g.volume,
                       out + grp * g.c_out_g * g.n_out + offset, g.n_out, False, work)
        else:
            _vol2col(x + grp * g.c_in_g * g.volume, g, g.c_in_g, r0, r1, c0, c1, col)
            _product3d(p, grp, 0, 0, g.c_out_g, n, col, n, out + grp * g.c_out_g * g.n_out + offset, g.n_out,
                       False, work)
    if bias != NULL:
        for co in range(g.groups * g.c_out_g):
            dst = out + co * g.n_out + offset
            value = bias[co]
            for i in range(n):
                dst[i] += value


def conv3d_forward(const floating[:, :, :, :, ::1] x, const floating[:, ::1] weight, const floating[::1] bias,
                   floating[:, :, :, :, ::1] out, int kernel_d, int kernel_h, int kernel_w,
                   int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w,
                   int dilation_d, int dilation_h, int dilation_w, int groups,
                   Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """out[n, co, r] = bias[co] + W_grp @ vol2col(x[n, grp]) for the output rows r = od*H_out + oh in
    [row_begin, row_end); weight is (C_out, C_in/groups * kD*kH*kW)."""
    cdef Conv3dGeometry g = _conv3d_geometry(x.shape[1], x.shape[2], x.shape[3], x.shape[4], weight.shape[0],
                                             kernel_d, kernel_h, kernel_w, out.shape[2], out.shape[3], out.shape[4],
                                             groups, stride_d, stride_h, stride_w, pad_d, pad_h, pad_w,
                                             dilation_d, dilation_h, dilation_w)
    cdef Py_ssize_t batch = x.shape[0], per_image, n_items, item, tid, col_size, work_size
    cdef bint has_bias = bias.shape[0] > 0
    if batch == 0 or row_end <= row_begin or g.n_out == 0:
        return
    _conv3d_bands(&g, batch, row_end - row_begin, n_threads)
    per_image = _n_tiles3d(&g, row_begin, row_end)
    n_items = batch * per_image
    cdef int team = _team(n_threads, n_items)
    cdef Product3d p
    packed = _pack3d(weight, &g, False, 1, &p)
    col_size = _col_size3d(&g)
    work_size = _product3d_work(&p, floating is float)
    dtype = np.asarray(out).dtype
    cdef floating[::1] col = np.empty(team * col_size, dtype=dtype)
    cdef floating[::1] work = np.empty(team * work_size, dtype=dtype)
    with _blas_limit(p.level == CONVX_GEMM_BLAS):
        with nogil, parallel(num_threads=team):
            tid = threadid()
            for item in prange(n_items, schedule='static'):
                _forward_tile3d(&x[item // per_image, 0, 0, 0, 0], &p, &bias[0] if has_bias else NULL,
                                &out[item // per_image, 0, 0, 0, 0], &g, item % per_image, row_begin, row_end,
                                &col[tid * col_size], &work[tid * work_size])


cdef void _input_item3d(const floating* grad_out, Product3d* p, floating* grad_in, Conv3dGeometry* g,
                        Py_ssize_t grp, Py_ssize_t q, Py_ssize_t row_begin, Py_ssize_t row_end, floating* col,
                        floating* work) noexcept nogil:
    """grad_in[grp's channels of part q] += col2vol(W_grp^T[part q] @ grad_out[grp]) over one image's
    tiles of the rows [row_begin, row_end), in order."""
    cdef Py_ssize_t ch0, ch1, m, tile, n_tiles, r0, r1, c0, c1, n, offset
    cdef const floating* dy = grad_out + grp * g.c_out_g * g.n_out
    cdef floating* dx
    _channel_part(g, p.parts, q, &ch0, &ch1)
    if ch1 == ch0:
        return
    m = (ch1 - ch0) * g.taps
    dx = grad_in + (grp * g.c_in_g + ch0) * g.volume
    n_tiles = _n_tiles3d(g, row_begin, row_end)
    for tile in range(n_tiles):
        _tile3d(g, tile, row_begin, row_end, &r0, &r1, &c0, &c1)
        n = (r1 - r0) * (c1 - c0)
        offset = r0 * g.out_w + c0
        if g.direct_1x1:
            _product3d(p, grp, q, ch0 * g.taps, m, n, dy + offset, g.n_out, dx + offset, g.volume, True, work)
        else:
            _product3d(p, grp, q, ch0 * g.taps, m, n, dy + offset, g.n_out, col, n, False, work)
            _col2vol(col, g, ch1 - ch0, r0, r1, c0, c1, dx)


def conv3d_backward_input(const floating[:, :, :, :, ::1] grad_out, const floating[:, ::1] weight,
                          floating[:, :, :, :, ::1] grad_in, int kernel_d, int kernel_h, int kernel_w,
                          int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w,
                          int dilation_d, int dilation_h, int dilation_w, int groups,
                          Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """grad_in += col2vol(W^T @ grad_out) over the output rows [row_begin, row_end): each thread takes
    (image, group, range of input channels) items, which write disjoint parts of grad_in."""
    cdef Conv3dGeometry g = _conv3d_geometry(grad_in.shape[1], grad_in.shape[2], grad_in.shape[3], grad_in.shape[4],
                                             weight.shape[0], kernel_d, kernel_h, kernel_w, grad_out.shape[2],
                                             grad_out.shape[3], grad_out.shape[4], groups, stride_d, stride_h, stride_w,
                                             pad_d, pad_h, pad_w, dilation_d, dilation_h, dilation_w)
    cdef Py_ssize_t batch = grad_in.shape[0], parts, n_items, item, tid, col_size, work_size, per_image
    if batch == 0 or row_end <= row_begin or g.n_out == 0 or g.c_out_g == 0:
        return
    _conv3d_bands(&g, batch, row_end - row_begin, 0)
    # Few images and groups: their input channels split too, so that every thread has an item.
    parts = min(g.c_in_g, max(1, (n_threads + batch * groups - 1) // (batch * groups)))
    per_image = groups * parts
    n_items = batch * per_image
    cdef int team = _team(n_threads, n_items)
    cdef Product3d p
    packed = _pack3d(weight, &g, True, parts, &p)
    col_size = _col_size3d(&g)
    work_size = _product3d_work(&p, floating is float)
    dtype = np.asarray(grad_in).dtype
    cdef floating[::1] col = np.empty(team * col_size, dtype=dtype)
    cdef floating[::1] work = np.empty(team * work_size, dtype=dtype)
    with _blas_limit(p.level == CONVX_GEMM_BLAS):
        with nogil, parallel(num_threads=team):
            tid = threadid()
            for item in prange(n_items, schedule='static'):
                _input_item3d(&grad_out[item // per_image, 0, 0, 0, 0], &p, &grad_in[item // per_image, 0, 0, 0, 0],
                              &g, (item % per_image) // parts, item % parts, row_begin, row_end,
                              &col[tid * col_size], &work[tid * work_size])


cdef void _weight_tile3d(const floating* grad_out, const floating* x, floating* partial, Conv3dGeometry* g,
                         Py_ssize_t tile, Py_ssize_t row_begin, Py_ssize_t row_end, floating* col) noexcept nogil:
    """partial_grp += grad_out[grp, tile] @ vol2col(x[grp], tile)^T for one image's tile and every group."""
    cdef Py_ssize_t r0, r1, c0, c1, n, grp, offset
    cdef const floating* columns
    cdef Py_ssize_t ld
    _tile3d(g, tile, row_begin, row_end, &r0, &r1, &c0, &c1)
    n = (r1 - r0) * (c1 - c0)
    offset = r0 * g.out_w + c0
    for grp in range(g.groups):
        if g.direct_1x1:
            columns = x + grp * g.c_in_g * g.volume + offset
            ld = g.volume
        else:
            _vol2col(x + grp * g.c_in_g * g.volume, g, g.c_in_g, r0, r1, c0, c1, col)
            columns = col
            ld = n
        _gemm(False, True, g.c_out_g, g.col_rows, n, 1, grad_out + grp * g.c_out_g * g.n_out + offset, g.n_out,
              columns, ld, 1, partial + grp * g.c_out_g * g.col_rows, g.col_rows)


def conv3d_backward_weight(const floating[:, :, :, :, ::1] grad_out, const floating[:, :, :, :, ::1] x,
                           floating[:, ::1] grad_weight, int kernel_d, int kernel_h, int kernel_w,
                           int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w,
                           int dilation_d, int dilation_h, int dilation_w, int groups,
                           Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """grad_weight += sum_n grad_out[n, rows] @ vol2col(x[n], rows)^T over the output rows [row_begin,
    row_end); grad_weight is (C_out, C_in/groups * kD*kH*kW). Each thread sums its tiles in its own
    partial; the partials are added in thread order after the parallel block."""
    cdef Conv3dGeometry g = _conv3d_geometry(x.shape[1], x.shape[2], x.shape[3], x.shape[4], grad_weight.shape[0],
                                             kernel_d, kernel_h, kernel_w, grad_out.shape[2], grad_out.shape[3],
                                             grad_out.shape[4], groups, stride_d, stride_h, stride_w,
                                             pad_d, pad_h, pad_w, dilation_d, dilation_h, dilation_w)
    cdef Py_ssize_t batch = x.shape[0], per_image, n_items, item, tid, col_size, i, t
    cdef Py_ssize_t w_size = grad_weight.shape[0] * grad_weight.shape[1]
    if batch == 0 or row_end <= row_begin or g.n_out == 0 or w_size == 0:
        return
    _conv3d_bands(&g, batch, row_end - row_begin, n_threads)
    per_image = _n_tiles3d(&g, row_begin, row_end)
    n_items = batch * per_image
    cdef int team = _team(n_threads, n_items)
    col_size = _col_size3d(&g)
    dtype = np.asarray(grad_weight).dtype
    cdef floating[::1] col = np.empty(team * col_size, dtype=dtype)
    cdef floating[::1] parts = np.zeros(team * w_size, dtype=dtype)
    cdef floating* total = &grad_weight[0, 0]
    with _blas_limit(True):
        with nogil, parallel(num_threads=team):
            tid = threadid()
            for item in prange(n_items, schedule='static'):
                _weight_tile3d(&grad_out[item // per_image, 0, 0, 0, 0], &x[item // per_image, 0, 0, 0, 0],
                               &parts[tid * w_size], &g, item % per_image, row_begin, row_end, &col[tid * col_size])
    with nogil:
        for t in range(team):
            for i in range(w_size):
                total[i] += parts[t * w_size + i]
