# 3-D convolution kernels over channels-last volumes (N, D, H, W, C): the implicit GEMM with the
# output voxels as rows.
#
# A tile is a run of consecutive output voxels [q0, q1) of one image, q = (od * H_out + oh) * W_out + ow,
# as in _conv3d.pxi (whose geometry, tiles and column budget these kernels share). Channels last,
# the tile's column matrix has one row per voxel and one column per (tap, input channel of the
# group), tap-major: each tap's C_in/groups channels are contiguous in the input, so that the
# gather (_vol2row) is one copy per voxel and tap, zeros for the padding. With the weight of each
# group as (kD*kH*kW * C_in/groups, C_out/groups) (reordered once per call by the caller), the
# product of the tile by it, (P, C_out/groups), is the tile's rows of the output itself, at column
# grp * C_out/groups with row stride C_out: no output buffer. The input gradient is the adjoint,
# grad_out's rows times the weight's transpose, added back by _row2vol; the weight gradient sums
# grad_out's rows^T times the tiles in per-thread partials.
#
# The products are BLAS's (_gemm), which takes the strided output and grad_out rows as they are;
# BLAS is held at one thread while the team calls it.


cdef void _vol2row(const floating* image, Conv3dGeometry* g, Py_ssize_t c_in, Py_ssize_t c0, Py_ssize_t nch,
                   Py_ssize_t q0, Py_ssize_t q1, floating* col) noexcept nogil:
    """col[q - q0, ((a*kH + b)*kW + e)*nch + c] = image[od*sD - pD + a*dD, oh*sH - pH + b*dH,
    ow*sW - pW + e*dW, c0 + c] (0 outside) for q = (od*H_out + oh)*W_out + ow in [q0, q1), c < nch;
    image is one (D, H, W, c_in) volume."""
    cdef Py_ssize_t q, od, oh, ow, a, b, e, in_d, in_h, in_w, rest
    cdef Py_ssize_t kh = g.kernel[1], kw = g.kernel[2], plane = g.out_h * g.out_w
    cdef size_t bytes = nch * sizeof(floating)
    cdef bint whole_row = g.dilation[2] == 1 and nch == c_in  # the kW taps of a row are one run
    cdef floating* dst = col
    cdef const floating* src
    od = q0 // plane
    rest = q0 - od * plane
    oh = rest // g.out_w
    ow = rest - oh * g.out_w
    for q in range(q0, q1):
        for a in range(g.kernel[0]):
            in_d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
            if in_d < 0 or in_d >= g.depth:
                memset(dst, 0, kh * kw * bytes)
                dst += kh * kw * nch
                continue
            for b in range(kh):
                in_h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                if in_h < 0 or in_h >= g.height:
                    memset(dst, 0, kw * bytes)
                    dst += kw * nch
                    continue
                in_w = ow * g.stride[2] - g.pad[2]
                src = image + ((in_d * g.height + in_h) * g.width) * c_in + c0
                if whole_row and in_w >= 0 and in_w + kw <= g.width:
                    memcpy(dst, src + in_w * c_in, kw * bytes)
                    dst += kw * nch
                    continue
                for e in range(kw):
                    if in_w >= 0 and in_w < g.width:
                        memcpy(dst, src + in_w * c_in, bytes)
                    else:
                        memset(dst, 0, bytes)
                    dst += nch
                    in_w = in_w + g.dilation[2]
        ow = ow + 1
        if ow == g.out_w:
            ow = 0
            oh = oh + 1
            if oh == g.out_h:
                oh = 0
                od = od + 1


cdef void _row2vol(const floating* col, Conv3dGeometry* g, Py_ssize_t c_in, Py_ssize_t c0, Py_ssize_t nch,
                   Py_ssize_t q0, Py_ssize_t q1, floating* image) noexcept nogil:
    """image[od*sD - pD + a*dD, oh*sH - pH + b*dH, ow*sW - pW + e*dW, c0 + c] += col[q - q0, ((a*kH + b)*kW
    + e)*nch + c]: the adjoint of _vol2row, same arguments."""
    cdef Py_ssize_t q, od, oh, ow, a, b, e, in_d, in_h, in_w, rest, c
    cdef Py_ssize_t kh = g.kernel[1], kw = g.kernel[2], plane = g.out_h * g.out_w
    cdef const floating* src = col
    cdef floating* dst
    od = q0 // plane
    rest = q0 - od * plane
    oh = rest // g.out_w
    ow = rest - oh * g.out_w
    for q in range(q0, q1):
        for a in range(g.kernel[0]):
            in_d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
            if in_d < 0 or in_d >= g.depth:
                src += kh * kw * nch
                continue
            for b in range(kh):
                in_h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                if in_h < 0 or in_h >= g.height:
                    src += kw * nch
                    continue
                in_w = ow * g.stride[2] - g.pad[2]
                for e in range(kw):
                    if in_w >= 0 and in_w < g.width:
                        dst = image + ((in_d * g.height + in_h) * g.width + in_w) * c_in + c0
                        for c in range(nch):
                            dst[c] += src[c]
                    src += nch
                    in_w = in_w + g.dilation[2]
        ow = ow + 1
        if ow == g.out_w:
            ow = 0
            oh = oh + 1
            if oh == g.out_h:
                oh = 0
                od = od + 1


cdef Conv3dGeometry _last_geometry(Py_ssize_t c_in, Py_ssize_t depth, Py_ssize_t height, Py_ssize_t width,
                                   Py_ssize_t c_out, Py_ssize_t out_d, Py_ssize_t out_h, Py_ssize_t out_w,
                                   int kernel_d, int kernel_h, int kernel_w, int stride_d, int stride_h, int stride_w,
                                   int pad_d, int pad_h, int pad_w, int dilation_d, int dilation_h, int dilation_w,
                                   int groups) noexcept nogil:
    return _conv3d_geometry(c_in, depth, height, width, c_out, kernel_d, kernel_h, kernel_w, out_d, out_h, out_w,
                            groups, stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dilation_d, dilation_h,
                            dilation_w)


cdef void _forward_tile_last(const floating* x, const floating* weight, const floating* bias, floating* out,
                             Conv3dGeometry* g, Py_ssize_t tile, Py_ssize_t q_begin, Py_ssize_t q_end,
                             floating* col) noexcept nogil:
    """out[tile, grp] = bias[grp] + vol2row(x[grp], tile) @ weight[grp] for one image's tile and every group."""
    cdef Py_ssize_t q0, q1, n, grp, i, j
    cdef Py_ssize_t c_in = g.groups * g.c_in_g, c_out = g.groups * g.c_out_g
    cdef const floating* rows
    cdef floating* dst
    cdef int ld
    _tile3d(g, tile, q_begin, q_end, &q0, &q1)
    n = q1 - q0
    for grp in range(g.groups):
        if g.direct_1x1:
            rows = x + q0 * c_in + grp * g.c_in_g
            ld = <int> c_in
        else:
            _vol2row(x, g, c_in, grp * g.c_in_g, g.c_in_g, q0, q1, col)
            rows = col
            ld = <int> g.col_rows
        _gemm(False, False, <int> n, <int> g.c_out_g, <int> g.col_rows, 1, rows, ld,
              weight + grp * g.col_rows * g.c_out_g, <int> g.c_out_g, 0, out + q0 * c_out + grp * g.c_out_g,
              <int> c_out)
    if bias != NULL:
        for i in range(n):
            dst = out + (q0 + i) * c_out
            for j in range(c_out):
                dst[j] += bias[j]


def conv3d_forward_last(const floating[:, :, :, :, ::1] x, const floating[:, :, ::1] weight, const floating[::1] bias,
                        floating[:, :, :, :, ::1] out, int kernel_d, int kernel_h, int kernel_w,
                        int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w,
                        int dilation_d, int dilation_h, int dilation_w, int groups,
                        Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """out[n, r, :, grp] = bias[grp] + vol2row(x[n, grp], r) @ weight[grp] for the output rows r = od*H_out + oh
    in [row_begin, row_end); x (N, D, H, W, C_in), out (N, D_out, H_out, W_out, C_out), weight
    (groups, kD*kH*kW * C_in/groups, C_out/groups) tap-major."""
    cdef Conv3dGeometry g = _last_geometry(x.shape[4], x.shape[1], x.shape[2], x.shape[3], out.shape[4],
                                           out.shape[1], out.shape[2], out.shape[3], kernel_d, kernel_h, kernel_w,
                                           stride_d, stride_h, stride_w, pad_d, pad_h, pad_w,
                                           dilation_d, dilation_h, dilation_w, groups)
    cdef Py_ssize_t batch = x.shape[0], per_image, n_items, item, tid, col_size
    cdef Py_ssize_t q_begin = row_begin * g.out_w, q_end = row_end * g.out_w
    cdef bint has_bias = bias.shape[0] > 0
    if batch == 0 or row_end <= row_begin or g.n_out == 0 or g.c_out_g == 0:
        return
    _conv3d_tiles(&g, batch, q_end - q_begin, n_threads)
    per_image = _n_tiles3d(&g, q_begin, q_end)
    n_items = batch * per_image
    cdef int team = _team(n_threads, n_items)
    col_size = _col_size3d(&g)
    cdef floating[::1] col = np.empty(team * col_size, dtype=np.asarray(out).dtype)
    with _blas_limit(True):
        with nogil, parallel(num_threads=team):
            tid = threadid()
            for item in prange(n_items, schedule='static'):
                _forward_tile_last(&x[item // per_image, 0, 0, 0, 0], &weight[0, 0, 0],
                                   &bias[0] if has_bias else NULL, &out[item // per_image, 0, 0, 0, 0], &g,
                                   item % per_image, q_begin, q_end, &col[tid * col_size])


cdef void _input_item_last(const floating* grad_out, const floating* weight, floating* grad_in, Conv3dGeometry* g,
                           Py_ssize_t parts, Py_ssize_t grp, Py_ssize_t part, Py_ssize_t q_begin, Py_ssize_t q_end,
                           floating* col) noexcept nogil:
    """grad_in[:, channels of part of grp] += row2vol(grad_out[:, grp] @ weight[grp, part]) over one
    image's tiles of the output voxels [q_begin, q_end), in order; weight[grp, part] is (C_out/groups,
    kD*kH*kW * channels of the part), tap-major, at grp * C_out/groups * col_rows + C_out/groups *
    taps * (first channel of the part)."""
    cdef Py_ssize_t ch0, ch1, nch, tile, n_tiles, q0, q1, n, k
    cdef Py_ssize_t c_in = g.groups * g.c_in_g, c_out = g.groups * g.c_out_g
    cdef const floating* w
    _channel_part(g, parts, part, &ch0, &ch1)
    nch = ch1 - ch0
    if nch == 0:
        return
    k = g.taps * nch
    w = weight + grp * g.c_out_g * g.col_rows + g.c_out_g * g.taps * ch0
    n_tiles = _n_tiles3d(g, q_begin, q_end)
    for tile in range(n_tiles):
        _tile3d(g, tile, q_begin, q_end, &q0, &q1)
        n = q1 - q0
        if g.direct_1x1:
            _gemm(False, False, <int> n, <int> nch, <int> g.c_out_g, 1, grad_out + q0 * c_out + grp * g.c_out_g,
                  <int> c_out, w, <int> nch, 1, grad_in + q0 * c_in + grp * g.c_in_g + ch0, <int> c_in)
        else:
            _gemm(False, False, <int> n, <int> k, <int> g.c_out_g, 1, grad_out + q0 * c_out + grp * g.c_out_g,
                  <int> c_out, w, <int> k, 0, col, <int> k)
            _row2vol(col, g, c_in, grp * g.c_in_g + ch0, nch, q0, q1, grad_in)


def conv3d_backward_input_last(const floating[:, :, :, :, ::1] grad_out, const floating[:, ::1] weight,
                               floating[:, :, :, :, ::1] grad_in, int kernel_d, int kernel_h, int kernel_w,
                               int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w,
                               int dilation_d, int dilation_h, int dilation_w, int groups,
                               Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """grad_in += row2vol(grad_out[rows] @ W^T) over the output rows [row_begin, row_end), channels
    last; weight is PyTorch's (C_out, C_in/groups * kD*kH*kW). Each thread takes (image, group, range
    of input channels) items, which write disjoint parts of grad_in."""
    cdef Conv3dGeometry g = _last_geometry(grad_in.shape[4], grad_in.shape[1], grad_in.shape[2], grad_in.shape[3],
                                           grad_out.shape[4], grad_out.shape[1], grad_out.shape[2],
                                           grad_out.shape[3], kernel_d, kernel_h, kernel_w,
                                           stride_d, stride_h, stride_w, pad_d, pad_h, pad_w,
                                           dilation_d, dilation_h, dilation_w, groups)
    cdef Py_ssize_t batch = grad_in.shape[0], parts, per_image, n_items, item, tid, col_size, q, ch0, ch1
    cdef Py_ssize_t q_begin = row_begin * g.out_w, q_end = row_end * g.out_w
    if batch == 0 or row_end <= row_begin or g.n_out == 0 or g.c_out_g == 0:
        return
    _conv3d_tiles(&g, batch, q_end - q_begin, 0)
    # Few images and groups: their input channels split too, so that every thread has an item.
    parts = min(g.c_in_g, max(1, (n_threads + batch * groups - 1) // (batch * groups)))
    per_image = groups * parts
    n_items = batch * per_image
    cdef int team = _team(n_threads, n_items)
    # each part's rows of W^T as (C_out/groups, taps, channels of the part), one after the other
    by_channel = np.asarray(weight).reshape(groups, g.c_out_g, g.c_in_g, g.taps)
    reordered = np.empty((groups, g.c_out_g * g.col_rows), dtype=by_channel.dtype)
    for q in range(parts):
        _channel_part(&g, parts, q, &ch0, &ch1)
        reordered[:, g.c_out_g * g.taps * ch0:g.c_out_g * g.taps * ch1] = (
            by_channel[:, :, ch0:ch1, :].transpose(0, 1, 3, 2).reshape(groups, -1))
    cdef const floating[:, ::1] w = reordered
    col_size = g.col_rows * g.tile_cols if not g.direct_1x1 else 1
    cdef floating[::1] col = np.empty(team * col_size, dtype=by_channel.dtype)
    with _blas_limit(True):
        with nogil, parallel(num_threads=team):
            tid = threadid()
            for item in prange(n_items, schedule='static'):
                _input_item_last(&grad_out[item // per_image, 0, 0, 0, 0], &w[0, 0],
                                 &grad_in[item // per_image, 0, 0, 0, 0], &g, parts, (item % per_image) // parts,
                                 item % parts, q_begin, q_end, &col[tid * col_size])


cdef void _weight_tile_last(const floating* grad_out, const floating* x, floating* partial, Conv3dGeometry* g,
                            Py_ssize_t tile, Py_ssize_t q_begin, Py_ssize_t q_end, floating* col) noexcept nogil:
    """partial[grp] += grad_out[tile, grp]^T @ vol2row(x[grp], tile) for one image's tile and every group."""
    cdef Py_ssize_t q0, q1, n, grp
    cdef Py_ssize_t c_in = g.groups * g.c_in_g, c_out = g.groups * g.c_out_g
    cdef const floating* rows
    cdef int ld
    _tile3d(g, tile, q_begin, q_end, &q0, &q1)
    n = q1 - q0
    for grp in range(g.groups):
        if g.direct_1x1:
            rows = x + q0 * c_in + grp * g.c_in_g
            ld = <int> c_in
        else:
            _vol2row(x, g, c_in, grp * g.c_in_g, g.c_in_g, q0, q1, col)
            rows = col
            ld = <int> g.col_rows
        _gemm(True, False, <int> g.c_out_g, <int> g.col_rows, <int> n, 1, grad_out + q0 * c_out + grp * g.c_out_g,
              <int> c_out, rows, ld, 1, partial + grp * g.c_out_g * g.col_rows, <int> g.col_rows)


def conv3d_backward_weight_last(const floating[:, :, :, :, ::1] grad_out, const floating[:, :, :, :, ::1] x,
                                floating[:, ::1] grad_weight, int kernel_d, int kernel_h, int kernel_w,
                                int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w,
                                int dilation_d, int dilation_h, int dilation_w, int groups,
                                Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """grad_weight += sum_n grad_out[n, rows]^T @ vol2row(x[n], rows) over the output rows [row_begin,
    row_end), channels last; grad_weight is (C_out, kD*kH*kW * C_in/groups), tap-major. Each thread
    sums its tiles in its own partial; the partials are added in thread order after the parallel block."""
    cdef Conv3dGeometry g = _last_geometry(x.shape[4], x.shape[1], x.shape[2], x.shape[3], grad_out.shape[4],
                                           grad_out.shape[1], grad_out.shape[2], grad_out.shape[3],
                                           kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w,
                                           pad_d, pad_h, pad_w, dilation_d, dilation_h, dilation_w, groups)
    cdef Py_ssize_t batch = x.shape[0], per_image, n_items, item, tid, col_size, i, t
    cdef Py_ssize_t w_size = grad_weight.shape[0] * grad_weight.shape[1]
    cdef Py_ssize_t q_begin = row_begin * g.out_w, q_end = row_end * g.out_w
    if batch == 0 or row_end <= row_begin or g.n_out == 0 or w_size == 0:
        return
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
                _weight_tile_last(&grad_out[item // per_image, 0, 0, 0, 0], &x[item // per_image, 0, 0, 0, 0],
                                  &parts[tid * w_size], &g, item % per_image, q_begin, q_end, &col[tid * col_size])
    with nogil:
        for t in range(team):
            for i in range(w_size):
                total[i] += parts[t * w_size + i]
