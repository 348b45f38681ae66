# 3-D convolution kernels over NCDHW volumes: Caffe's scheme with the depth among the taps.
#
# A tile is a run of consecutive output voxels of one image, q = (od * H_out + oh) * W_out + ow in
# [q0, q1), whole rows or not. vol2col unfolds the tile into a column matrix of (C_in/groups * kD*kH*kW)
# rows in a per-thread buffer, so that scratch is bounded whatever the batch or volume; the
# forward is W_grp @ col, the input gradient col2vol(W_grp^T @ grad_out), the weight gradient
# grad_out @ col^T summed in per-thread partials that are added up after the parallel block.
# A 1x1x1 kernel with stride 1 and no padding reads the input volume as its column matrix.
#
# With convx's GEMM, one group and no depth dilation, the three ops run on the 2-D packed kernels
# instead (_implicit_forward3d, _implicit_input3d, _implicit_weight3d, where the 2-D packed paths'
# own conditions hold): each image is copied depth-major, (D, C_in, H, W), its depth padding as
# zero slices, so that the kD depth taps of one output depth slice are kD * C_in consecutive
# planes, the input channels of one 2-D convolution with the weight (C_out, kD * C_in, kH, kW);
# convx_conv_block / convx_conv_input_block / convx_conv_weight_block pack their column blocks
# straight from it, with no column matrix written and read back. Their scratch is one image's
# copies and a slice's buffers, whatever the batch.
#
# Every entry point takes a range [row_begin, row_end) of output rows, so that the public ops
# split a huge volume into several calls (and Ctrl-C is seen between them); the packed paths take
# ranges of whole output depth slices only. The input and weight gradients add into their outputs
# (which the caller zeroes once): each band adds its share.
#
# The tiles' products are convx's packed GEMM (_gemm.h) where _level() picks it, else BLAS; the
# tiles' weight gradient products are BLAS's at every level (as the 2-D im2col tiles').

# Elements of one thread's column tile: the 2-D tiles' bound (set_conv3d_column_budget lowers it for
# tests). Smaller tiles were slower on a C3D layer (2x64x16x56x56, 3x3x3, 64->64, 2 threads, the
# tiles then whole output rows, machine shared; forward / input / weight gradient in ms): 1 Mi
# elements 219 / 200 / 239, 256 Ki 240 / 224 / 255, 64 Ki 378 / 349 / 316.
cdef Py_ssize_t _col3d_budget = COL_BUDGET

# Bytes of one thread's channels-last rows in _direct3d (its kD slots): a slice's output rows are
# cut into chunks whose input rows fit, so that scratch stays bounded whatever the plane. Time
# hardly depends on it: C3D forward (2x64x16x56x56, 3x3x3, 64->64; Xeon family 6 model 167,
# AVX-512, 1 thread, machine busy, medians of 5) 138 ms at 256 KiB, 135 at 512 KiB, 1 MiB, 2 MiB
# and 16 MiB (whole slices).
cdef Py_ssize_t _direct3d_rows_bytes = 512 * 1024


# What the last forward, input and weight gradient ran (for tests): "direct", "packed" (the depth-major
# 2-D packed kernels), "depthwise" (the depthwise loops: _depthwise_forward3d, _depthwise_input3d,
# _depthwise_weight3d) or "tiles" (vol2col / col2vol).
_conv3d_ran = {"forward": None, "input": None, "weight": None}


def conv3d_ran():
    """{"forward": ..., "input": ..., "weight": ...}: the implementation the last 3-D forward, input
    gradient and weight gradient ran ("direct", "packed", "depthwise" or "tiles"; None before
    any)."""
    return dict(_conv3d_ran)


def set_conv3d_direct_rows(Py_ssize_t nbytes):
    """Bound the bytes of _direct3d's per-thread channels-last rows (for tests, which cut slices
    into chunks of rows with it, and tuning; not thread-safe against running calls); returns the
    bound before."""
    global _direct3d_rows_bytes
    before = _direct3d_rows_bytes
    _direct3d_rows_bytes = max(1, nbytes)
    return before


def set_conv3d_column_budget(Py_ssize_t elements):
    """Bound the elements of the 3-D kernels' per-thread column tile (for tests and tuning; not
    thread-safe against running calls); returns the bound before."""
    global _col3d_budget
    before = _col3d_budget
    _col3d_budget = max(1, elements)
    return before


from libc.string cimport memcpy


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
    Py_ssize_t tile_cols     # output voxels per tile
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
    g.tile_cols = 1
    return g


cdef void _conv3d_tiles(Conv3dGeometry* g, Py_ssize_t n_images, Py_ssize_t n_voxels, int n_threads) noexcept nogil:
    """Tiles of at most _col3d_budget column elements (a 1x1x1 direct tile: the whole range of
    n_voxels), cut further where n_threads is given (> 0) so that n_images images give every thread
    a tile."""
    cdef Py_ssize_t want
    g.tile_cols = max(1, n_voxels)
    if not g.direct_1x1 and g.col_rows * g.tile_cols > _col3d_budget:
        g.tile_cols = max(1, _col3d_budget // max(1, g.col_rows))
    if n_threads > 0 and n_images < n_threads:
        want = (n_threads + n_images - 1) // n_images
        g.tile_cols = min(g.tile_cols, max(1, (n_voxels + want - 1) // want))


cdef inline Py_ssize_t _n_tiles3d(Conv3dGeometry* g, Py_ssize_t q_begin, Py_ssize_t q_end) noexcept nogil:
    """Tiles of one image's output voxels [q_begin, q_end)."""
    return (q_end - q_begin + g.tile_cols - 1) // g.tile_cols


cdef inline void _tile3d(Conv3dGeometry* g, Py_ssize_t tile, Py_ssize_t q_begin, Py_ssize_t q_end,
                         Py_ssize_t* q0, Py_ssize_t* q1) noexcept nogil:
    """The output voxels [q0, q1) of tile number ``tile`` of [q_begin, q_end)."""
    q0[0] = q_begin + tile * g.tile_cols
    q1[0] = min(q0[0] + g.tile_cols, q_end)


cdef inline Py_ssize_t _col_size3d(Conv3dGeometry* g) noexcept nogil:
    if g.direct_1x1:
        return 1
    return g.col_rows * g.tile_cols


cdef void _vol2col(const floating* image, Conv3dGeometry* g, Py_ssize_t channels, Py_ssize_t q0, Py_ssize_t q1,
                   floating* col) noexcept nogil:
    """col[(c, a, b, e), q - q0] = image[c, od*sD - pD + a*dD, oh*sH - pH + b*dH, ow*sW - pW + e*dW]
    (0 outside) for the output voxels q = (od*H_out + oh)*W_out + ow in [q0, q1), c < channels."""
    cdef Py_ssize_t ld = q1 - q0, r_first = q0 // g.out_w, r_last = (q1 - 1) // g.out_w
    cdef Py_ssize_t c, a, b, e, r, od, oh, in_d, in_h, iw0, lo, hi, lo_row, hi_row, ow, c0, c1, n
    cdef Py_ssize_t sw = g.stride[2]
    cdef floating* dst
    cdef const floating* src
    for c in range(channels):
        for a in range(g.kernel[0]):
            for b in range(g.kernel[1]):
                for e in range(g.kernel[2]):
                    iw0 = e * g.dilation[2] - g.pad[2]
                    _valid_range(iw0, sw, g.width, g.out_w, &lo_row, &hi_row)
                    dst = col + (((c * g.kernel[0] + a) * g.kernel[1] + b) * g.kernel[2] + e) * ld
                    od = r_first // g.out_h
                    oh = r_first - od * g.out_h
                    for r in range(r_first, r_last + 1):
                        # this row's columns [c0, c1) of the tile
                        c0 = q0 - r * g.out_w if r == r_first else 0
                        c1 = q1 - r * g.out_w if r == r_last else g.out_w
                        n = c1 - c0
                        in_d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
                        in_h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                        if in_d < 0 or in_d >= g.depth or in_h < 0 or in_h >= g.height:
                            memset(dst, 0, n * sizeof(floating))
                        else:
                            lo = lo_row
                            hi = hi_row
                            _clip_range(c0, c1, &lo, &hi)
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


cdef void _col2vol(const floating* col, Conv3dGeometry* g, Py_ssize_t channels, Py_ssize_t q0, Py_ssize_t q1,
                   floating* image) noexcept nogil:
    """image[c, od*sD - pD + a*dD, oh*sH - pH + b*dH, ow*sW - pW + e*dW] += col[(c, a, b, e), q - q0]
    (the adjoint of _vol2col, same arguments)."""
    cdef Py_ssize_t ld = q1 - q0, r_first = q0 // g.out_w, r_last = (q1 - 1) // g.out_w
    cdef Py_ssize_t c, a, b, e, r, od, oh, in_d, in_h, iw0, lo, hi, lo_row, hi_row, ow, c0, c1
    cdef Py_ssize_t sw = g.stride[2]
    cdef const floating* src
    cdef floating* dst
    for c in range(channels):
        for a in range(g.kernel[0]):
            for b in range(g.kernel[1]):
                for e in range(g.kernel[2]):
                    iw0 = e * g.dilation[2] - g.pad[2]
                    _valid_range(iw0, sw, g.width, g.out_w, &lo_row, &hi_row)
                    src = col + (((c * g.kernel[0] + a) * g.kernel[1] + b) * g.kernel[2] + e) * ld
                    od = r_first // g.out_h
                    oh = r_first - od * g.out_h
                    for r in range(r_first, r_last + 1):
                        c0 = q0 - r * g.out_w if r == r_first else 0
                        c1 = q1 - r * g.out_w if r == r_last else g.out_w
                        in_d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
                        in_h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                        if in_d >= 0 and in_d < g.depth and in_h >= 0 and in_h < g.height:
                            lo = lo_row
                            hi = hi_row
                            _clip_range(c0, c1, &lo, &hi)
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
                        src += c1 - c0
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
                          Py_ssize_t tile, Py_ssize_t q_begin, Py_ssize_t q_end, floating* col,
                          floating* work) noexcept nogil:
    """out[co, tile] = bias[co] + W_grp @ vol2col(x[grp], tile) for one image's tile and every group."""
    cdef Py_ssize_t q0, q1, n, grp, co, i
    cdef floating* dst
    cdef floating value
    _tile3d(g, tile, q_begin, q_end, &q0, &q1)
    n = q1 - q0
    for grp in range(g.groups):
        if g.direct_1x1:
            _product3d(p, grp, 0, 0, g.c_out_g, n, x + grp * g.c_in_g * g.volume + q0, g.volume,
                       out + grp * g.c_out_g * g.n_out + q0, g.n_out, False, work)
        else:
            _vol2col(x + grp * g.c_in_g * g.volume, g, g.c_in_g, q0, q1, col)
            _product3d(p, grp, 0, 0, g.c_out_g, n, col, n, out + grp * g.c_out_g * g.n_out + q0, g.n_out,
                       False, work)
    if bias != NULL:
        for co in range(g.groups * g.c_out_g):
            dst = out + co * g.n_out + q0
            value = bias[co]
            for i in range(n):
                dst[i] += value


cdef inline bint _implicit3d_applies(Conv3dGeometry* g, Py_ssize_t row_begin, Py_ssize_t row_end) noexcept nogil:
    """Whether _implicit_forward3d computes these output rows: convx's GEMM, one group, depth
    dilation 1, whole output depth slices, and the depths read at most a few times the input's."""
    cdef Py_ssize_t span
    if (_level() == CONVX_GEMM_BLAS or g.groups != 1 or g.dilation[0] != 1 or g.direct_1x1 or g.c_out_g == 0
            or row_begin % g.out_h or row_end % g.out_h):
        return False
    span = (row_end // g.out_h - 1 - row_begin // g.out_h) * g.stride[0] + g.kernel[0]
    return span <= 2 * (g.depth + g.kernel[0])


cdef convx_conv_shape _depth_major_shape(Conv3dGeometry* g) noexcept nogil:
    """The 2-D convolution of one output depth slice over a depth-major copy (_implicit_forward3d):
    kD * C_in input channels, the kernel's height and width."""
    cdef convx_conv_shape s
    s.groups = 1
    s.c_in_g = g.kernel[0] * g.c_in_g
    s.c_out_g = g.c_out_g
    s.height = g.height
    s.width = g.width
    s.out_h = g.out_h
    s.out_w = g.out_w
    s.kh = g.kernel[1]
    s.kw = g.kernel[2]
    s.sh = g.stride[1]
    s.sw = g.stride[2]
    s.ph = g.pad[1]
    s.pw = g.pad[2]
    s.dh = g.dilation[1]
    s.dw = g.dilation[2]
    s.x_last = 0
    s.out_last = 0
    s.o_h = g.out_h
    s.o_w = g.out_w
    s.o_sh = 1
    s.o_sw = 1
    s.o_cs = 0
    return s


cdef int _implicit_forward3d(const floating[:, :, :, :, ::1] x, const floating[:, ::1] weight, const floating* bias,
                             floating[:, :, :, :, ::1] out, Conv3dGeometry* g, Py_ssize_t od_begin,
                             Py_ssize_t od_end, int n_threads) except -1:
    """out[n, :, od] for od in [od_begin, od_end) by convx_conv_block (_implicit_conv), which packs its
    column blocks straight from the input, with no column matrix: each image is copied depth-major,
    (D, C_in, H, W), its depth padding as zero slices, so that the kD depth taps of an output depth
    slice are kD * C_in consecutive planes, the channels of one 2-D convolution whose weight is
    (C_out, kD * C_in, kH, kW); its (C_out, H_out * W_out) output goes through a buffer into out."""
    cdef Py_ssize_t c_in = g.c_in_g, kd = g.kernel[0], plane = g.height * g.width, n_out = g.out_h * g.out_w
    cdef Py_ssize_t c_out = g.c_out_g, sd = g.stride[0]
    cdef Py_ssize_t d_first = od_begin * sd - g.pad[0], span = (od_end - 1 - od_begin) * sd + kd
    cdef Py_ssize_t n, t, c, d, od, co
    dtype = np.asarray(out).dtype
    # weight[co, a * C_in + c, b, e] = W[co, c, a, b, e]
    w4 = np.ascontiguousarray(np.asarray(weight).reshape(c_out, c_in, kd, g.kernel[1], g.kernel[2])
                              .transpose(0, 2, 1, 3, 4).reshape(c_out, kd * c_in, g.kernel[1], g.kernel[2]))
    cdef const floating[:, :, :, ::1] w4_view = w4
    cdef WeightProduct wp
    packed = _pack_weight(w4_view, 1, False, &wp)
    cdef convx_conv_shape s = _depth_major_shape(g)
    # Enough depth slices: each thread takes whole slices (one team per image, not one per slice:
    # a team that waits at every slice for its slowest thread loses most on a busy machine);
    # else every slice's columns are split over the team.
    cdef bint by_slices = od_end - od_begin >= 2 * n_threads
    cdef int team = _team(n_threads, span), slice_team = _team(n_threads, od_end - od_begin), tid
    cdef Py_ssize_t block, work_size, q0, nc
    if floating is float:
        block = convx_conv_block_cols_f(wp.level)
        work_size = convx_gemm_work_size_f(wp.level)
    else:
        block = convx_conv_block_cols_d(wp.level)
        work_size = convx_gemm_work_size_d(wp.level)
    cdef floating[:, :, ::1] depth_major = np.empty((span, c_in, plane), dtype=dtype)
    cdef floating[:, :, ::1] buf = np.empty((slice_team if by_slices else 1, c_out, n_out), dtype=dtype)
    cdef floating[:, ::1] work = np.empty((slice_team, work_size), dtype=dtype)
    for n in range(x.shape[0]):
        with nogil:
            for t in prange(span, schedule='static', num_threads=team):
                d = d_first + t
                for c in range(c_in):
                    if d >= 0 and d < g.depth:
                        memcpy(&depth_major[t, c, 0], &x[n, c, d, 0, 0], plane * sizeof(floating))
                    else:
                        memset(&depth_major[t, c, 0], 0, plane * sizeof(floating))
        if by_slices:
            with nogil, parallel(num_threads=slice_team):
                tid = threadid()
                for od in prange(od_begin, od_end, schedule='static'):
                    q0 = 0
                    while q0 < n_out:
                        nc = min(block, n_out - q0)
                        if floating is float:
                            convx_conv_block_f(wp.level, &s, <const float*> wp.packed, wp.group_size, bias, NULL,
                                               &depth_major[(od - od_begin) * sd, 0, 0], &buf[tid, 0, 0], q0, nc,
                                               &work[tid, 0])
                        else:
                            convx_conv_block_d(wp.level, &s, <const double*> wp.packed, wp.group_size, bias, NULL,
                                               &depth_major[(od - od_begin) * sd, 0, 0], &buf[tid, 0, 0], q0, nc,
                                               &work[tid, 0])
                        q0 = q0 + nc
                    for co in range(c_out):
                        memcpy(&out[n, co, od, 0, 0], &buf[tid, co, 0], n_out * sizeof(floating))
            continue
        for od in range(od_begin, od_end):
            _implicit_conv(&depth_major[(od - od_begin) * sd, 0, 0], &wp, bias, NULL, &buf[0, 0, 0], &s, 1,
                           n_threads)
            with nogil:
                for co in range(c_out):
                    memcpy(&out[n, co, od, 0, 0], &buf[0, co, 0], n_out * sizeof(floating))
    return 0




cdef convx_conv_shape _slice_shape(Conv3dGeometry* g, bint last=False) noexcept nogil:
    """The 2-D shape of one depth slice of the convolution g, for convx_direct_conv3d_rows: channels
    first, the output's channels a volume apart, or channels last (NDHWC)."""
    cdef convx_conv_shape s = _depth_major_shape(g)
    s.groups = g.groups
    s.c_in_g = g.c_in_g
    s.x_last = last
    s.out_last = last
    s.o_cs = 0 if last else g.n_out
    return s


cdef convx_depth_axis _depth_axis(Conv3dGeometry* g, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """The depth axis of g for the 3-D direct kernels, reading the input slices [lo, hi)."""
    cdef convx_depth_axis axis
    axis.depth = g.depth
    axis.kd = g.kernel[0]
    axis.sd = g.stride[0]
    axis.pd = g.pad[0]
    axis.dd = g.dilation[0]
    axis.lo = lo
    axis.hi = hi
    return axis


cdef bint _direct3d_applies(Conv3dGeometry* g, Py_ssize_t batch, Py_ssize_t row_begin, Py_ssize_t row_end,
                            bint is_float, bint last=False) noexcept nogil:
    """Whether _direct3d computes these output rows: convx's GEMM level, whole output depth slices,
    the taps within the kernel's bounds, and the 2-D direct kernel would take a slice in rows
    (_direct_mode_wanted: enough output channels to fill its lanes, not 1x1, ...)."""
    cdef convx_conv_shape s
    if (_level() == CONVX_GEMM_BLAS or g.direct_1x1 or g.c_out_g == 0 or g.c_in_g == 0
            or row_begin % g.out_h or row_end % g.out_h or g.kernel[0] > CONVX_DIRECT3D_DEPTH_TAPS
            or g.taps > CONVX_DIRECT3D_TAPS):
        return False
    s = _slice_shape(g, last)
    return _direct_mode_wanted(&s, batch * (row_end - row_begin) // g.out_h, is_float, last) == DIRECT_ROWS


cdef int _direct3d(const floating* x, Py_ssize_t batch, const floating* weight, Py_ssize_t s_g, Py_ssize_t s_m,
                   Py_ssize_t s_c, Py_ssize_t s_t, const floating* bias, floating* out, Py_ssize_t out_image,
                   Py_ssize_t out_channel, Conv3dGeometry* g, Py_ssize_t od_begin, Py_ssize_t od_end,
                   Py_ssize_t in_lo, Py_ssize_t in_hi, int n_threads, bint last=False) except -1:
    """Output slices [od_begin, od_end) of the convolution g of x (N, C_in, D, H, W) plus bias, by
    convx_direct_conv3d_rows: the 2-D direct tile with the depth taps among its taps, reading
    each input slice's rows channels last from a slot that keeps them for the next output slices;
    the input slices outside [in_lo, in_hi) count as zeros. out points at image 0's slice od_begin,
    out_image and out_channel elements from one image, and one channel, to the next; with last, x
    and out are channels last (N, D, H, W, C) and out_channel is not read. Group grp's
    weight of output channel co, input channel c and tap t (t = (a * kH + i) * kW + j) is
    weight[grp * s_g + co * s_m + c * s_c + t * s_t]. Threads take (image, chunk of rows, run of
    output slices) items, the chunks cut so that a thread's slots hold at most
    _direct3d_rows_bytes. Returns 0, having written nothing, where a weight is not finite."""
    cdef Py_ssize_t kd = g.kernel[0], n_slices = od_end - od_begin, image_in = g.groups * g.c_in_g * g.volume
    cdef Py_ssize_t out_slice = g.out_h * g.out_w * (g.groups * g.c_out_g if last else 1)
    cdef Py_ssize_t item, n, r0, r1, od0, od1, mr, chunk, per_slice, runs, per_image, n_items, slots, group_size
    cdef int level = _level(), tid, team
    cdef convx_conv_shape s = _slice_shape(g, last)
    cdef convx_depth_axis axis = _depth_axis(g, in_lo, in_hi)
    if not last:
        s.o_cs = out_channel
    packing = _direct_pack(weight, s_g, s_m, s_c, s_t, bias, &s, n_threads, g.taps)
    if packing is None:
        return 0
    cdef floating[::1] packed = packing[0]
    cdef floating[::1] lane_bias
    cdef const floating* b = NULL
    if packing[1] is not None:
        lane_bias = packing[1]
        b = &lane_bias[0]
    group_size = packed.shape[0] // g.groups
    mr = convx_direct_rows_f(level) if floating is float else convx_direct_rows_d(level)
    chunk = g.out_h
    while chunk > 1 and kd * convx_direct_buffer_size(&s, mr, chunk) * sizeof(floating) > <size_t> _direct3d_rows_bytes:
        chunk = (chunk + 1) // 2
    per_slice = (g.out_h + chunk - 1) // chunk
    # runs of output slices: as long as every thread still gets two items
    runs = min(n_slices, max(1, (2 * n_threads + batch * per_slice - 1) // (batch * per_slice)))
    per_image = per_slice * runs
    n_items = batch * per_image
    team = _team(n_threads, n_items)
    slots = kd * convx_direct_buffer_size(&s, mr, chunk)
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] buf = np.empty(team * slots, dtype=dtype)
    with nogil, parallel(num_threads=team):
        tid = threadid()
        for item in prange(n_items, schedule='static'):
            n = item // per_image
            r0 = (item % per_slice) * chunk
            r1 = min(r0 + chunk, g.out_h)
            od0 = od_begin + (item % per_image // per_slice) * n_slices // runs
            od1 = od_begin + (item % per_image // per_slice + 1) * n_slices // runs
            if floating is float:
                convx_direct_conv3d_rows_f(level, &s, &axis, &packed[0], group_size, b, NULL, x + n * image_in,
                                           out + n * out_image + (od0 - od_begin) * out_slice, out_slice, od0, od1,
                                           r0, r1, &buf[tid * slots])
            else:
                convx_direct_conv3d_rows_d(level, &s, &axis, &packed[0], group_size, b, NULL, x + n * image_in,
                                           out + n * out_image + (od0 - od_begin) * out_slice, out_slice, od0, od1,
                                           r0, r1, &buf[tid * slots])
    return 1


cdef void _depthwise_volume3d(const floating* x, const floating* w, floating b, floating* out, Conv3dGeometry* g,
                              Py_ssize_t row_begin, Py_ssize_t row_end) noexcept nogil:
    """out[r] = b + the taps of w (kD, kH, kW) over the channel's input volume x, for the output rows
    r = od * H_out + oh in [row_begin, row_end) of one output channel (out at its volume), each
    row a sum of shifted input rows along W."""
    cdef Py_ssize_t r, od, oh, a, i, j, ow, lo, hi, id_, ih, step = g.stride[2]
    cdef floating v
    cdef floating* orow
    cdef const floating* xrow
    for r in range(row_begin, row_end):
        od = r // g.out_h
        oh = r % g.out_h
        orow = out + r * g.out_w
        for ow in range(g.out_w):
            orow[ow] = b
        for a in range(g.kernel[0]):
            id_ = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
            if id_ < 0 or id_ >= g.depth:
                continue
            for i in range(g.kernel[1]):
                ih = oh * g.stride[1] - g.pad[1] + i * g.dilation[1]
                if ih < 0 or ih >= g.height:
                    continue
                for j in range(g.kernel[2]):
                    v = w[(a * g.kernel[1] + i) * g.kernel[2] + j]
                    _valid_range(j * g.dilation[2] - g.pad[2], step, g.width, g.out_w, &lo, &hi)
                    xrow = x + (id_ * g.height + ih) * g.width + j * g.dilation[2] - g.pad[2]
                    if step == 1:
                        for ow in range(lo, hi):
                            orow[ow] = orow[ow] + v * xrow[ow]
                    else:
                        for ow in range(lo, hi):
                            orow[ow] = orow[ow] + v * xrow[ow * step]


cdef void _depthwise_forward3d(const floating* x, Py_ssize_t batch, const floating* weight, const floating* bias,
                               floating* out, Conv3dGeometry* g, Py_ssize_t row_begin, Py_ssize_t row_end,
                               int n_threads) noexcept nogil:
    """A depthwise convolution's output rows [row_begin, row_end) (one input channel per group, any
    multiplier) of x (N, C_in, D, H, W) into out (N, C_out, D_out, H_out, W_out), the weight
    (C_out, kD * kH * kW): threads take (image, output channel) volumes."""
    cdef Py_ssize_t c_out = g.groups * g.c_out_g, u
    for u in prange(batch * c_out, schedule='static', num_threads=_team(n_threads, batch * c_out)):
        _depthwise_volume3d(x + ((u // c_out) * g.groups + (u % c_out) // g.c_out_g) * g.volume,
                            weight + (u % c_out) * g.taps, bias[u % c_out] if bias != NULL else 0,
                            out + u * g.n_out, g, row_begin, row_end)


# The two gradients of a depthwise convolution (_depthwise3d.h): per (image, channel) volume, rows
# of W-contiguous products as the forward's. Their scratch is a row of column sums per tap and thread.

cdef extern from "_depthwise3d.h" nogil:
    ctypedef struct convx_dw3d_shape:
        Py_ssize_t depth, height, width, out_d, out_h, out_w
        Py_ssize_t kd, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw
    void convx_dw3d_input_f(const float* grad_out, Py_ssize_t m, const float* weight, float* grad_in,
                            const convx_dw3d_shape* s, Py_ssize_t row_begin, Py_ssize_t row_end,
                            const Py_ssize_t* lo, const Py_ssize_t* hi)
    void convx_dw3d_input_d(const double* grad_out, Py_ssize_t m, const double* weight, double* grad_in,
                            const convx_dw3d_shape* s, Py_ssize_t row_begin, Py_ssize_t row_end,
                            const Py_ssize_t* lo, const Py_ssize_t* hi)
    int convx_dw3d_weight_f(const float* grad_out, const float* x, float* partial, float* wsum,
                            const convx_dw3d_shape* s, Py_ssize_t row_begin, Py_ssize_t row_end,
                            const Py_ssize_t* lo, const Py_ssize_t* hi, int check)
    int convx_dw3d_weight_d(const double* grad_out, const double* x, double* partial, double* wsum,
                            const convx_dw3d_shape* s, Py_ssize_t row_begin, Py_ssize_t row_end,
                            const Py_ssize_t* lo, const Py_ssize_t* hi, int check)


cdef inline bint _depthwise3d(Conv3dGeometry* g) noexcept nogil:
    """Whether g is depthwise: one input channel per group, any multiplier."""
    return g.c_in_g == 1 and g.groups > 1


cdef convx_dw3d_shape _dw3d_shape(Conv3dGeometry* g) noexcept nogil:
    cdef convx_dw3d_shape s
    s.depth, s.height, s.width = g.depth, g.height, g.width
    s.out_d, s.out_h, s.out_w = g.out_d, g.out_h, g.out_w
    s.kd, s.kh, s.kw = g.kernel[0], g.kernel[1], g.kernel[2]
    s.sd, s.sh, s.sw = g.stride[0], g.stride[1], g.stride[2]
    s.pd, s.ph, s.pw = g.pad[0], g.pad[1], g.pad[2]
    s.dd, s.dh, s.dw = g.dilation[0], g.dilation[1], g.dilation[2]
    return s


cdef Py_ssize_t[::1] _dw3d_columns(Conv3dGeometry* g):
    """lo[e], then hi[e] (one array): the output columns ow whose tap e lands inside the input row."""
    cdef Py_ssize_t kw = g.kernel[2], e
    cdef Py_ssize_t[::1] ranges = np.empty(2 * kw, dtype=np.intp)
    for e in range(kw):
        _valid_range(e * g.dilation[2] - g.pad[2], g.stride[2], g.width, g.out_w, &ranges[e], &ranges[kw + e])
    return ranges


cdef bint _reaches_padding3d(Conv3dGeometry* g) noexcept nogil:
    """Whether some tap of some output falls outside the input (before it, or after it where the
    output overshoots)."""
    cdef int axis
    cdef Py_ssize_t size[3]
    cdef Py_ssize_t out[3]
    size[0], size[1], size[2] = g.depth, g.height, g.width
    out[0], out[1], out[2] = g.out_d, g.out_h, g.out_w
    for axis in range(3):
        if g.pad[axis] > 0:
            return True
        if (out[axis] - 1) * g.stride[axis] - g.pad[axis] + (g.kernel[axis] - 1) * g.dilation[axis] >= size[axis]:
            return True
    return False


# Images whose (image, channel) volumes one parallel block of the depthwise weight gradient takes
# at least this many of: the block's rows of taps, summed per channel in image order after it, are
# the only scratch, so it is bounded by the channels, not by the batch.
DW3D_WEIGHT_ITEMS = 64


cdef bint _depthwise_weight3d(const floating[:, :, :, :, ::1] grad_out, const floating[:, :, :, :, ::1] x,
                              floating[:, ::1] grad_weight, Conv3dGeometry* g, Py_ssize_t row_begin,
                              Py_ssize_t row_end, int n_threads) except -1:
    """grad_weight (C_out, kD*kH*kW) += a depthwise convolution's weight gradient over the output rows
    [row_begin, row_end): threads take (image, output channel) volumes (convx_dw3d_weight) of a block
    of images, each summed into its own row of taps; after each block the rows are added per channel
    in image order, so that the result does not depend on the threads or the blocks. Where a tap
    reaches the padding, grad_out must be finite (the products with the padding's zeros are skipped):
    returns False, having written nothing, where it is not."""
    cdef Py_ssize_t batch = x.shape[0], c_out = g.groups * g.c_out_g, taps = g.taps
    cdef Py_ssize_t block = min(batch, max(1, (DW3D_WEIGHT_ITEMS + c_out - 1) // c_out))
    cdef Py_ssize_t n_items = block * c_out, first, count, item, n, co, t
    # one row of column sums per tap and thread, each thread's on its own cache lines
    cdef Py_ssize_t slot = (taps * g.out_w + 15) // 16 * 16 + 16
    cdef int team = _team(n_threads, n_items), tid, check = _reaches_padding3d(g)
    cdef convx_dw3d_shape s = _dw3d_shape(g)
    cdef Py_ssize_t[::1] ranges = _dw3d_columns(g)
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] partials = np.empty(team * slot, dtype=dtype)
    cdef floating[:, ::1] sums = np.empty((n_items, taps), dtype=dtype)
    cdef floating[:, ::1] totals = np.empty((c_out, taps), dtype=dtype)
    cdef unsigned char[::1] finite = np.empty(n_items, dtype=np.uint8)
    cdef const floating* dy = &grad_out[0, 0, 0, 0, 0]
    cdef const floating* xs = &x[0, 0, 0, 0, 0]
    cdef const floating* image
    with nogil:
        first = 0
        while first < batch:
            count = min(block, batch - first) * c_out
            with parallel(num_threads=team):
                tid = threadid()
                for item in prange(count, schedule='static'):
                    # image first + item // c_out's output channel co reads input channel co // m
                    n = first + item // c_out
                    co = item % c_out
                    image = xs + n * g.groups * g.volume
                    if floating is float:
                        finite[item] = convx_dw3d_weight_f(dy + (first * c_out + item) * g.n_out,
                                                           image + (co // g.c_out_g) * g.volume,
                                                           &partials[tid * slot], &sums[item, 0], &s, row_begin,
                                                           row_end, &ranges[0], &ranges[g.kernel[2]], check)
                    else:
                        finite[item] = convx_dw3d_weight_d(dy + (first * c_out + item) * g.n_out,
                                                           image + (co // g.c_out_g) * g.volume,
                                                           &partials[tid * slot], &sums[item, 0], &s, row_begin,
                                                           row_end, &ranges[0], &ranges[g.kernel[2]], check)
            for item in range(count):
                if not finite[item]:
                    return False
            for item in range(count):
                co = item % c_out
                if first == 0 and item < c_out:
                    for t in range(taps):
                        totals[co, t] = sums[item, t]
                else:
                    for t in range(taps):
                        totals[co, t] = totals[co, t] + sums[item, t]
            first += block
        for co in range(c_out):
            for t in range(taps):
                grad_weight[co, t] += totals[co, t]
    return True


cdef int _depthwise_input3d(const floating[:, :, :, :, ::1] grad_out, const floating[:, ::1] weight,
                            floating[:, :, :, :, ::1] grad_in, Conv3dGeometry* g, Py_ssize_t row_begin,
                            Py_ssize_t row_end, int n_threads) except -1:
    """grad_in += a depthwise convolution's input gradient from the output rows [row_begin, row_end),
    any stride: threads take (image, input channel) volumes (convx_dw3d_input), each adding its
    channel's m output channels' rows into its own volume, so that no two threads write one element
    and each element's sum runs in one order whatever the threads. Only the products landing in the
    input are computed, as col2vol keeps only those: exact for any weight and grad_out."""
    cdef Py_ssize_t batch = grad_in.shape[0], c_in = g.groups, m = g.c_out_g, n_items = batch * c_in, item
    cdef convx_dw3d_shape s = _dw3d_shape(g)
    cdef Py_ssize_t[::1] ranges = _dw3d_columns(g)
    cdef const floating* dy = &grad_out[0, 0, 0, 0, 0]
    cdef const floating* w = &weight[0, 0]
    cdef floating* dx = &grad_in[0, 0, 0, 0, 0]
    with nogil:
        for item in prange(n_items, schedule='static', num_threads=_team(n_threads, n_items)):
            # image n's input channel ci: item = n * C_in + ci, its output channels item * m + [0, m)
            if floating is float:
                convx_dw3d_input_f(dy + item * m * g.n_out, m, w + (item % c_in) * m * g.taps, dx + item * g.volume,
                                   &s, row_begin, row_end, &ranges[0], &ranges[g.kernel[2]])
            else:
                convx_dw3d_input_d(dy + item * m * g.n_out, m, w + (item % c_in) * m * g.taps, dx + item * g.volume,
                                   &s, row_begin, row_end, &ranges[0], &ranges[g.kernel[2]])
    return 0


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
    cdef Py_ssize_t q_begin = row_begin * g.out_w, q_end = row_end * g.out_w
    cdef bint has_bias = bias.shape[0] > 0
    if batch == 0 or row_end <= row_begin or g.n_out == 0:
        return
    # (taps in the padding are skipped, which only a finite weight makes equal to adding zero)
    if _depthwise3d(&g) and np.isfinite(np.asarray(weight)).all():
        with nogil:
            _depthwise_forward3d(&x[0, 0, 0, 0, 0], batch, &weight[0, 0], &bias[0] if has_bias else NULL,
                                 &out[0, 0, 0, 0, 0], &g, row_begin, row_end, n_threads)
        _conv3d_ran["forward"] = "depthwise"
        return
    if _direct3d_applies(&g, batch, row_begin, row_end, floating is float):
        if _direct3d(&x[0, 0, 0, 0, 0], batch, &weight[0, 0], g.c_out_g * g.col_rows, g.col_rows, g.taps, 1,
                     &bias[0] if has_bias else NULL, &out[0, 0, row_begin // g.out_h, 0, 0],
                     groups * g.c_out_g * g.n_out, g.n_out, &g, row_begin // g.out_h, row_end // g.out_h, 0, g.depth,
                     n_threads):
            _conv3d_ran["forward"] = "direct"
            return
    if _implicit3d_applies(&g, row_begin, row_end):
        _conv3d_ran["forward"] = "packed"
        _implicit_forward3d(x, weight, &bias[0] if has_bias else NULL, out, &g, row_begin // g.out_h,
                            row_end // g.out_h, n_threads)
        return
    _conv3d_ran["forward"] = "tiles"
    _conv3d_tiles(&g, batch, q_end - q_begin, n_threads)
    per_image = _n_tiles3d(&g, q_begin, q_end)
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
                                &out[item // per_image, 0, 0, 0, 0], &g, item % per_image, q_begin, q_end,
                                &col[tid * col_size], &work[tid * work_size])


cdef void _input_item3d(const floating* grad_out, Product3d* p, floating* grad_in, Conv3dGeometry* g,
                        Py_ssize_t grp, Py_ssize_t q, Py_ssize_t q_begin, Py_ssize_t q_end, floating* col,
                        floating* work) noexcept nogil:
    """grad_in[grp's channels of part q] += col2vol(W_grp^T[part q] @ grad_out[grp]) over one image's
    tiles of the output voxels [q_begin, q_end), in order."""
    cdef Py_ssize_t ch0, ch1, m, tile, n_tiles, q0, q1, n
    cdef const floating* dy = grad_out + grp * g.c_out_g * g.n_out
    cdef floating* dx
    _channel_part(g, p.parts, q, &ch0, &ch1)
    if ch1 == ch0:
        return
    m = (ch1 - ch0) * g.taps
    dx = grad_in + (grp * g.c_in_g + ch0) * g.volume
    n_tiles = _n_tiles3d(g, q_begin, q_end)
    for tile in range(n_tiles):
        _tile3d(g, tile, q_begin, q_end, &q0, &q1)
        n = q1 - q0
        if g.direct_1x1:
            _product3d(p, grp, q, ch0 * g.taps, m, n, dy + q0, g.n_out, dx + q0, g.volume, True, work)
        else:
            _product3d(p, grp, q, ch0 * g.taps, m, n, dy + q0, g.n_out, col, n, False, work)
            _col2vol(col, g, ch1 - ch0, q0, q1, dx)


cdef inline bint _implicit_input3d_applies(Conv3dGeometry* g, Py_ssize_t row_begin, Py_ssize_t row_end,
                                           int n_threads) noexcept nogil:
    """Whether _implicit_input3d computes the input gradient of these output rows: as
    _implicit3d_applies, with enough input channels for each thread to take eight (as the 2-D
    packed input gradient, _packed_input)."""
    return _implicit3d_applies(g, row_begin, row_end) and g.c_in_g >= 8 * max(1, n_threads)


cdef int _implicit_input3d(const floating[:, :, :, :, ::1] grad_out, const floating[:, ::1] weight,
                           floating[:, :, :, :, ::1] grad_in, Conv3dGeometry* g, Py_ssize_t od_begin,
                           Py_ssize_t od_end, int n_threads) except -1:
    """grad_in += the input gradient of the output depth slices [od_begin, od_end) by
    convx_conv_input_block, with no column matrix: per image, the output gradient is copied
    depth-major (D_out, C_out, H_out*W_out) and the gradient summed into a depth-major buffer (D,
    C_in, H, W) as the 2-D input gradients of kD * C_in channels (as _implicit_forward3d); each thread
    owns a range of the real input channels, that is kD ranges of those channels (its rows of W^T
    packed once), so that no two threads write one element, and walks every slice and column block."""
    cdef Py_ssize_t c_in = g.c_in_g, kd = g.kernel[0], plane = g.height * g.width, n_out = g.out_h * g.out_w
    cdef Py_ssize_t c_out = g.c_out_g, sd = g.stride[0], taps2 = g.kernel[1] * g.kernel[2]
    cdef Py_ssize_t d_first = od_begin * sd - g.pad[0], span = (od_end - 1 - od_begin) * sd + kd
    cdef Py_ssize_t n_slices = od_end - od_begin, channels = kd * c_in, col_rows2 = channels * taps2
    cdef Py_ssize_t n, t, c, d, od, co, q0, nc, block, work_size, a, c_lo, c_hi, most, slot
    cdef int level = _level(), team = _team(n_threads, c_in), copy_team = _team(n_threads, span), tid
    cdef convx_conv_shape s = _depth_major_shape(g)
    dtype = np.asarray(grad_in).dtype
    w4 = np.ascontiguousarray(np.asarray(weight).reshape(c_out, c_in, kd, g.kernel[1], g.kernel[2])
                              .transpose(0, 2, 1, 3, 4).reshape(c_out, col_rows2))
    cdef const floating[:, ::1] w_view = w4
    if floating is float:
        block = convx_conv_block_cols_f(level)
        work_size = convx_gemm_work_size_f(level)
        slot = convx_gemm_packed_size_f(level, ((c_in + team - 1) // team) * taps2, c_out)
    else:
        block = convx_conv_block_cols_d(level)
        work_size = convx_gemm_work_size_d(level)
        slot = convx_gemm_packed_size_d(level, ((c_in + team - 1) // team) * taps2, c_out)
    cdef floating[::1] packed = np.empty(max(1, team * kd * slot), dtype=dtype)
    cdef floating[:, ::1] work = np.empty((team, work_size), dtype=dtype)
    cdef floating[:, :, ::1] out_major = np.empty((n_slices, c_out, n_out), dtype=dtype)
    cdef floating[:, :, ::1] in_major = np.empty((span, c_in, plane), dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            c_lo = t * c_in // team
            c_hi = (t + 1) * c_in // team
            for a in range(kd):
                # rows of W^T for the pseudo-channels a * C_in + [c_lo, c_hi), tap-major
                if floating is float:
                    convx_gemm_pack_a_cyclic_f(level, (c_hi - c_lo) * taps2, c_out, &w_view[0, (a * c_in + c_lo) * taps2],
                                               c_hi - c_lo, taps2, 1, c_out, col_rows2, 0,
                                               &packed[(t * kd + a) * slot])
                else:
                    convx_gemm_pack_a_cyclic_d(level, (c_hi - c_lo) * taps2, c_out, &w_view[0, (a * c_in + c_lo) * taps2],
                                               c_hi - c_lo, taps2, 1, c_out, col_rows2, 0,
                                               &packed[(t * kd + a) * slot])
    for n in range(grad_in.shape[0]):
        with nogil:
            for od in prange(od_begin, od_end, schedule='static', num_threads=_team(n_threads, n_slices)):
                for co in range(c_out):
                    memcpy(&out_major[od - od_begin, co, 0], &grad_out[n, co, od, 0, 0], n_out * sizeof(floating))
            with parallel(num_threads=team):
                tid = threadid()
                for t in prange(team, schedule='static'):
                    c_lo = t * c_in // team
                    c_hi = (t + 1) * c_in // team
                    for d in range(span):
                        memset(&in_major[d, c_lo, 0], 0, (c_hi - c_lo) * plane * sizeof(floating))
                    for od in range(od_begin, od_end):
                        for a in range(kd):
                            q0 = 0
                            while q0 < n_out:
                                nc = min(block, n_out - q0)
                                if floating is float:
                                    convx_conv_input_block_f(level, &s, &packed[(t * kd + a) * slot], 0, a * c_in + c_lo,
                                                             c_hi - c_lo, &out_major[od - od_begin, 0, 0],
                                                             &in_major[(od - od_begin) * sd, 0, 0], q0, nc,
                                                             &work[tid, 0])
                                else:
                                    convx_conv_input_block_d(level, &s, &packed[(t * kd + a) * slot], 0, a * c_in + c_lo,
                                                             c_hi - c_lo, &out_major[od - od_begin, 0, 0],
                                                             &in_major[(od - od_begin) * sd, 0, 0], q0, nc,
                                                             &work[tid, 0])
                                q0 = q0 + nc
                    for c in range(c_lo, c_hi):
                        for d in range(span):
                            if d_first + d >= 0 and d_first + d < g.depth:
                                _add_plane(&in_major[d, c, 0], &grad_in[n, c, d_first + d, 0, 0], plane)
    return 0


cdef inline void _add_plane(const floating* src, floating* dst, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(size):
        dst[i] += src[i]


cdef bint _direct_input3d(const floating[:, :, :, :, ::1] grad_out, const floating[:, ::1] weight,
                          floating[:, :, :, :, ::1] grad_in, Conv3dGeometry* g, Py_ssize_t row_begin,
                          Py_ssize_t row_end, int n_threads, bint last=False) except -1:
    """grad_in += the input gradient of a stride-1 convolution's output rows [row_begin, row_end)
    (whole depth slices) by _direct3d, where it applies: the convolution of grad_out with W's
    channels swapped and taps reversed, padded by dilation * (kernel - 1) - pad, over grad_out's
    slices in the band. Whole volumes are stored straight into grad_in (which the caller zeroes
    first); a band's input slices go through a buffer and are added. With last, grad_out and grad_in
    are channels last (N, D, H, W, C). Returns whether it ran."""
    cdef Py_ssize_t kd = g.kernel[0], dd = g.dilation[0], od0 = row_begin // g.out_h, od1 = row_end // g.out_h
    cdef Py_ssize_t batch = grad_in.shape[0], plane = g.height * g.width, c_in = g.groups * g.c_in_g
    cdef Py_ssize_t d_lo, d_hi, nd, u
    cdef Conv3dGeometry a = _conv3d_geometry(g.groups * g.c_out_g, g.out_d, g.out_h, g.out_w, c_in,
                                             kd, g.kernel[1], g.kernel[2], g.depth, g.height, g.width, g.groups,
                                             1, 1, 1, dd * (kd - 1) - g.pad[0],
                                             g.dilation[1] * (g.kernel[1] - 1) - g.pad[1],
                                             g.dilation[2] * (g.kernel[2] - 1) - g.pad[2],
                                             dd, g.dilation[1], g.dilation[2])
    if (a.pad[0] < 0 or a.pad[1] < 0 or a.pad[2] < 0 or row_begin % g.out_h or row_end % g.out_h
            or not _direct3d_applies(&a, batch, 0, a.out_d * a.out_h, floating is float, last)):
        return False
    # W^T: output channel c's weight of input channel co at tap t is W[co, c, taps - 1 - t]
    if od0 == 0 and od1 == g.out_d:
        return _direct3d(&grad_out[0, 0, 0, 0, 0], batch, &weight[0, 0] + (g.taps - 1), g.c_out_g * g.col_rows,
                         g.taps, g.col_rows, -1, NULL, &grad_in[0, 0, 0, 0, 0], c_in * g.volume, g.volume, &a, 0,
                         a.out_d, 0, g.out_d, n_threads, last) != 0
    # the input slices d whose taps d - pad' + k * dilation reach the band's slices
    d_lo = max(0, od0 + a.pad[0] - (kd - 1) * dd)
    d_hi = min(g.depth, od1 + a.pad[0])
    if d_hi <= d_lo:
        return True
    nd = d_hi - d_lo
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, :, ::1] part = np.empty((batch, c_in, nd, plane), dtype=dtype)
    if not _direct3d(&grad_out[0, 0, 0, 0, 0], batch, &weight[0, 0] + (g.taps - 1), g.c_out_g * g.col_rows,
                     g.taps, g.col_rows, -1, NULL, &part[0, 0, 0, 0], c_in * nd * plane, nd * plane, &a, d_lo, d_hi,
                     od0, od1, n_threads, last):
        return False
    cdef floating* dst
    with nogil:
        # (part holds the band's slices in grad_in's layout: per channel, or per image channels last)
        for u in prange(batch * c_in, schedule='static', num_threads=_team(n_threads, batch * c_in)):
            if last:
                dst = &grad_in[u // c_in, d_lo, 0, 0, 0] + (u % c_in) * nd * plane
            else:
                dst = &grad_in[u // c_in, u % c_in, d_lo, 0, 0]
            _add_plane(&part[u // c_in, u % c_in, 0, 0], dst, nd * plane)
    return True


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
    cdef Py_ssize_t q_begin = row_begin * g.out_w, q_end = row_end * g.out_w
    if batch == 0 or row_end <= row_begin or g.n_out == 0 or g.c_out_g == 0:
        return
    if _depthwise3d(&g):
        _depthwise_input3d(grad_out, weight, grad_in, &g, row_begin, row_end, n_threads)
        _conv3d_ran["input"] = "depthwise"
        return
    if stride_d == 1 and stride_h == 1 and stride_w == 1 and _direct_input3d(grad_out, weight, grad_in, &g,
                                                                             row_begin, row_end, n_threads):
        _conv3d_ran["input"] = "direct"
        return
    if _implicit_input3d_applies(&g, row_begin, row_end, n_threads):
        _conv3d_ran["input"] = "packed"
        _implicit_input3d(grad_out, weight, grad_in, &g, row_begin // g.out_h, row_end // g.out_h, n_threads)
        return
    _conv3d_ran["input"] = "tiles"
    _conv3d_tiles(&g, batch, q_end - q_begin, 0)
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
                              &g, (item % per_image) // parts, item % parts, q_begin, q_end,
                              &col[tid * col_size], &work[tid * work_size])


cdef inline bint _implicit_weight3d_applies(Conv3dGeometry* g, Py_ssize_t row_begin, Py_ssize_t row_end) noexcept nogil:
    """Whether _implicit_weight3d computes the weight gradient of these output rows: as
    _implicit3d_applies, with the 2-D packed weight gradient's own limits (at least 32 output
    channels, at most PACKED_WEIGHT_MOST elements; BLAS does better outside them)."""
    return (_implicit3d_applies(g, row_begin, row_end) and g.c_out_g >= 32
            and g.c_out_g * g.col_rows <= PACKED_WEIGHT_MOST)


cdef int _implicit_weight3d(const floating[:, :, :, :, ::1] grad_out, const floating[:, :, :, :, ::1] x,
                            floating* grad_weight, Conv3dGeometry* g, Py_ssize_t od_begin, Py_ssize_t od_end,
                            int n_threads) except -1:
    """grad_weight += the weight gradient of the output depth slices [od_begin, od_end) by
    convx_conv_weight_block over depth-major copies of each image (as _implicit_forward3d): each
    thread takes whole slices, copies the slice's output gradient into its buffer and sums into its
    own partial; the partials are added, in thread order, after every image."""
    cdef Py_ssize_t c_in = g.c_in_g, kd = g.kernel[0], plane = g.height * g.width, n_out = g.out_h * g.out_w
    cdef Py_ssize_t c_out = g.c_out_g, sd = g.stride[0], taps2 = g.kernel[1] * g.kernel[2]
    cdef Py_ssize_t d_first = od_begin * sd - g.pad[0], span = (od_end - 1 - od_begin) * sd + kd
    cdef Py_ssize_t w_size = c_out * g.col_rows, channels = kd * c_in
    cdef Py_ssize_t n, t, c, d, od, co, q0, nc, block, work_size, a, tap, i
    cdef int level = _level(), team = _team(n_threads, span), slice_team = _team(n_threads, od_end - od_begin), tid
    cdef convx_conv_shape s = _depth_major_shape(g)
    dtype = np.asarray(x).dtype
    if floating is float:
        block = convx_conv_weight_cols_f(level)
        work_size = convx_conv_weight_work_size_f(level, c_out)
    else:
        block = convx_conv_weight_cols_d(level)
        work_size = convx_conv_weight_work_size_d(level, c_out)
    cdef floating[:, :, ::1] depth_major = np.empty((span, c_in, plane), dtype=dtype)
    cdef floating[:, :, ::1] buf = np.empty((slice_team, c_out, n_out), dtype=dtype)
    cdef floating[:, ::1] work = np.empty((slice_team, work_size), dtype=dtype)
    cdef floating[:, ::1] parts = np.zeros((slice_team, w_size), dtype=dtype)
    for n in range(x.shape[0]):
        with nogil:
            for t in prange(span, schedule='static', num_threads=team):
                d = d_first + t
                for c in range(c_in):
                    if d >= 0 and d < g.depth:
                        memcpy(&depth_major[t, c, 0], &x[n, c, d, 0, 0], plane * sizeof(floating))
                    else:
                        memset(&depth_major[t, c, 0], 0, plane * sizeof(floating))
        with nogil, parallel(num_threads=slice_team):
            tid = threadid()
            for od in prange(od_begin, od_end, schedule='static'):
                for co in range(c_out):
                    memcpy(&buf[tid, co, 0], &grad_out[n, co, od, 0, 0], n_out * sizeof(floating))
                q0 = 0
                while q0 < n_out:
                    nc = min(block, n_out - q0)
                    if floating is float:
                        convx_conv_weight_block_f(level, &s, &buf[tid, 0, 0], &depth_major[(od - od_begin) * sd, 0, 0],
                                                  q0, nc, &parts[tid, 0], &work[tid, 0])
                    else:
                        convx_conv_weight_block_d(level, &s, &buf[tid, 0, 0], &depth_major[(od - od_begin) * sd, 0, 0],
                                                  q0, nc, &parts[tid, 0], &work[tid, 0])
                    q0 = q0 + nc
    with nogil:
        for t in range(1, slice_team):
            for i in range(w_size):
                parts[0, i] += parts[t, i]
        # the blocks sum the transposed gradient, its rows tap-major: row tap * (kD * C_in) + a * C_in + c
        # is grad_weight[co, (c * kD + a) * kH * kW + tap]
        for co in range(c_out):
            for c in range(c_in):
                for a in range(kd):
                    for tap in range(taps2):
                        grad_weight[co * g.col_rows + (c * kd + a) * taps2 + tap] += parts[
                            0, (tap * channels + a * c_in + c) * c_out + co]
    return 0


cdef void _weight_tile3d(const floating* grad_out, const floating* x, floating* partial, Conv3dGeometry* g,
                         Py_ssize_t tile, Py_ssize_t q_begin, Py_ssize_t q_end, floating* col) noexcept nogil:
    """partial_grp += grad_out[grp, tile] @ vol2col(x[grp], tile)^T for one image's tile and every group."""
    cdef Py_ssize_t q0, q1, n, grp
    cdef const floating* columns
    cdef Py_ssize_t ld
    _tile3d(g, tile, q_begin, q_end, &q0, &q1)
    n = q1 - q0
    for grp in range(g.groups):
        if g.direct_1x1:
            columns = x + grp * g.c_in_g * g.volume + q0
            ld = g.volume
        else:
            _vol2col(x + grp * g.c_in_g * g.volume, g, g.c_in_g, q0, q1, col)
            columns = col
            ld = n
        _gemm(False, True, g.c_out_g, g.col_rows, n, 1, grad_out + grp * g.c_out_g * g.n_out + q0, g.n_out,
              columns, ld, 1, partial + grp * g.c_out_g * g.col_rows, g.col_rows)


# Bytes of one thread's buffer in _direct_weight3d (the zero-padded input slices of a band of output
# slices, and the band's grad_out channels last): bands of output slices are cut to fit, so that
# scratch stays bounded whatever the volume (C3D's whole 16 slices take 28 MB, one slice 3.4 MB).
# Time hardly depends on it since the kernel reads grad_out in runs of rows that fit L2: C3D weight
# gradient (2x64x16x56x56, 3x3x3, 64->64; Xeon family 6 model 167, AVX-512, 1 thread, machine
# busy, medians of 5) 153-158 ms from 2 to 64 MiB; before the runs, 160 ms at 4 MiB, 340 at 16.
cdef Py_ssize_t _outer3d_bytes = 4 << 20


def set_conv3d_weight_band(Py_ssize_t nbytes):
    """Bound the bytes of the 3-D direct weight gradient's per-thread buffer (for tests, which cut
    volumes into bands of one output slice with it, and tuning; not thread-safe against running
    calls); returns the bound before."""
    global _outer3d_bytes
    before = _outer3d_bytes
    _outer3d_bytes = max(1, nbytes)
    return before


cdef bint _direct_weight3d_applies(Conv3dGeometry* g, Py_ssize_t row_begin, Py_ssize_t row_end,
                                   bint is_float, bint last=False) noexcept nogil:
    """Whether _direct_weight3d computes the weight gradient of these output rows: convx's GEMM
    level, whole output depth slices, not 1x1x1, output channels that fill the lanes, and the
    direct kernels not turned off."""
    if (_level() == CONVX_GEMM_BLAS or _dmode() == MODE_OFF or g.direct_1x1 or g.c_out_g == 0 or g.c_in_g == 0
            or row_begin % g.out_h or row_end % g.out_h):
        return False
    return last or _fills_lanes(g.c_out_g, is_float)


cdef inline size_t _outer3d_buffer(int level, convx_conv_shape* s, convx_depth_axis* axis, Py_ssize_t band,
                                  bint is_float) noexcept nogil:
    """Elements of convx_direct_weight_outer3d's buffer for bands of band output slices."""
    if is_float:
        return convx_direct_outer3d_buffer_size_f(level, s, axis, band)
    return convx_direct_outer3d_buffer_size_d(level, s, axis, band)


cdef Py_ssize_t _outer3d_band(int level, convx_conv_shape* s, convx_depth_axis* axis, Py_ssize_t n_slices,
                              size_t most_bytes, Py_ssize_t least, int n_threads, bint is_float) noexcept nogil:
    """Output slices of one item of _outer3d_weight: halved until the item's buffer fits most_bytes,
    then cut for two items a thread from one image (not from the batch, so that scratch is the same
    whatever the batch), but to no fewer than least slices; then evened out over the bands that
    makes (28 slices in bands of at most 19: 14 + 14, not 19 + 9)."""
    cdef Py_ssize_t band = n_slices
    cdef size_t item_size = sizeof(float) if is_float else sizeof(double)
    while band > 1 and _outer3d_buffer(level, s, axis, band, is_float) * item_size > most_bytes:
        band = (band + 1) // 2
    band = max(1, min(band, max(least, n_slices // (2 * n_threads))))
    if band >= n_slices:
        return band
    cdef Py_ssize_t bands = (n_slices + band - 1) // band
    return (n_slices + bands - 1) // bands


cdef int _outer3d_weight(const floating* grad_out, const floating* x, Py_ssize_t batch, convx_conv_shape* s,
                         convx_depth_axis* axis, convx_conv_shape* flat, Py_ssize_t out_d, Py_ssize_t od_begin,
                         Py_ssize_t od_end, Py_ssize_t band, int n_threads, floating* grad_weight) except -1:
    """grad_weight (overwritten, as convx_direct_outer_store for flat) = the weight gradient of the
    output slices [od_begin, od_end) of images [0, batch) by convx_direct_weight_outer3d (the output
    channels as lanes, rows of the gradient broadcast from zero-padded input slices): threads take
    (image, band of output slices) items, each summing into its own partial; the partials are added
    in thread order."""
    cdef int level = _level(), team, tid
    cdef Py_ssize_t bands = (od_end - od_begin + band - 1) // band, n_items = batch * bands
    cdef Py_ssize_t item, part_size, buf_size, n, od0, od1
    cdef Py_ssize_t image_in = s.groups * s.c_in_g * axis.depth * s.height * s.width
    cdef Py_ssize_t image_out = s.groups * s.c_out_g * out_d * s.out_h * s.out_w
    team = _team(n_threads, n_items)
    buf_size = _outer3d_buffer(level, s, axis, band, floating is float)
    if floating is float:
        part_size = convx_direct_outer_part_size_f(level, flat)
        dtype = np.float32
    else:
        part_size = convx_direct_outer_part_size_d(level, flat)
        dtype = np.float64
    cdef floating[::1] parts = np.zeros(team * part_size, dtype=dtype)
    cdef floating[::1] buf = np.empty(team * buf_size, dtype=dtype)
    with nogil:
        with parallel(num_threads=team):
            tid = threadid()
            for item in prange(n_items, schedule='static'):
                n = item // bands
                od0 = od_begin + (item % bands) * band
                od1 = min(od0 + band, od_end)
                if floating is float:
                    convx_direct_weight_outer3d_f(level, s, axis, grad_out + n * image_out, x + n * image_in,
                                                  out_d, od0, od1, &parts[tid * part_size], &buf[tid * buf_size])
                else:
                    convx_direct_weight_outer3d_d(level, s, axis, grad_out + n * image_out, x + n * image_in,
                                                  out_d, od0, od1, &parts[tid * part_size], &buf[tid * buf_size])
        _sum_partials(&parts[0], team, part_size, &parts[0])
        if floating is float:
            convx_direct_outer_store_f(level, flat, &parts[0], grad_weight)
        else:
            convx_direct_outer_store_d(level, flat, &parts[0], grad_weight)
    return 0


cdef int _direct_weight3d(const floating* grad_out, const floating* x, Py_ssize_t batch,
                          floating[:, ::1] grad_weight, Conv3dGeometry* g, Py_ssize_t od_begin, Py_ssize_t od_end,
                          int n_threads, bint last=False) except -1:
    """grad_weight += the weight gradient of the output slices [od_begin, od_end) by _outer3d_weight.
    With last, grad_out and x are channels last and grad_weight (C_out, kD*kH*kW * C_in/groups)
    tap-major."""
    cdef convx_conv_shape s = _slice_shape(g, last)
    cdef convx_conv_shape flat = s
    cdef convx_depth_axis axis = _depth_axis(g, 0, g.depth)
    cdef Py_ssize_t band, i
    flat.kh = g.kernel[0] * g.kernel[1]  # the partial's rows run over kD * kH * kW taps
    band = _outer3d_band(_level(), &s, &axis, od_end - od_begin, _outer3d_bytes, 1, n_threads, floating is float)
    cdef floating[:, ::1] total = np.empty_like(np.asarray(grad_weight))
    _outer3d_weight(grad_out, x, batch, &s, &axis, &flat, g.out_d, od_begin, od_end, band, n_threads, &total[0, 0])
    with nogil:
        if last:
            for i in range(total.shape[0] * total.shape[1]):
                # total[co, ci * taps + t] to grad_weight[co, t * C_in/groups + ci]
                grad_weight[i // total.shape[1], i % g.taps * g.c_in_g + i % total.shape[1] // g.taps] += \
                    (&total[0, 0])[i]
        else:
            _add_plane(&total[0, 0], &grad_weight[0, 0], total.shape[0] * total.shape[1])
    return 1


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
    cdef Py_ssize_t q_begin = row_begin * g.out_w, q_end = row_end * g.out_w
    if batch == 0 or row_end <= row_begin or g.n_out == 0 or w_size == 0:
        return
    # (strided along W the loops gather every other input column, once per output channel, where a
    # tile's columns serve the group's m channels: 2x64x16x56x56 3x3x3 stride 2, multiplier 2, one
    # thread, busy machine, 22.6 ms against the tiles' 12.8; multiplier 1, 13.0 and 13.3)
    if (_depthwise3d(&g) and g.stride[2] == 1
            and _depthwise_weight3d(grad_out, x, grad_weight, &g, row_begin, row_end, n_threads)):
        _conv3d_ran["weight"] = "depthwise"
        return
    if _direct_weight3d_applies(&g, row_begin, row_end, floating is float):
        _direct_weight3d(&grad_out[0, 0, 0, 0, 0], &x[0, 0, 0, 0, 0], batch, grad_weight, &g, row_begin // g.out_h,
                         row_end // g.out_h, n_threads)
        _conv3d_ran["weight"] = "direct"
        return
    if _implicit_weight3d_applies(&g, row_begin, row_end):
        _conv3d_ran["weight"] = "packed"
        _implicit_weight3d(grad_out, x, &grad_weight[0, 0], &g, row_begin // g.out_h, row_end // g.out_h, n_threads)
        return
    _conv3d_ran["weight"] = "tiles"
    _conv3d_tiles(&g, batch, q_end - q_begin, n_threads)
    per_image = _n_tiles3d(&g, q_begin, q_end)
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
                               &parts[tid * w_size], &g, item % per_image, q_begin, q_end, &col[tid * col_size])
    with nogil:
        for t in range(team):
            for i in range(w_size):
                total[i] += parts[t * w_size + i]
