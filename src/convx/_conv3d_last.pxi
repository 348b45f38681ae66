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


# Elements of one thread's column tile at most here (and at most the 3-D kernels' budget, which
# tests lower): a quarter of the channels-first tiles' bound. The tile is written and read back by
# BLAS, and 1 Mi float elements (4 MiB) leave the cache in between: the benchmark's C3D layer
# (2x64x16x56x56, 3x3x3, one thread, busy machine; forward / input / weight gradient in ms) took
# 178 / 184 / 202 with 1 Mi, 182 / 182 / 171 with 256 Ki, 199 / 201 / 167 with 128 Ki; its
# 7x7x7 stride-2 stem 59 / 60 / 67, 55 / 56 / 62 and 59 / 60 / 58.
cdef enum:
    LAST_TILE_ELEMENTS = 1 << 18


cdef void _last_tiles(Conv3dGeometry* g, Py_ssize_t n_images, Py_ssize_t n_voxels, int n_threads) noexcept nogil:
    """_conv3d_tiles, the column tile held to LAST_TILE_ELEMENTS too."""
    _conv3d_tiles(g, n_images, n_voxels, n_threads)
    if not g.direct_1x1:
        g.tile_cols = min(g.tile_cols, max(1, LAST_TILE_ELEMENTS // max(1, g.col_rows)))


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
    cdef bint whole_row = g.dilation[2] == 1 and nch == c_in  # the kW taps of a row add to one run
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
                if whole_row and in_w >= 0 and in_w + kw <= g.width:
                    dst = image + ((in_d * g.height + in_h) * g.width + in_w) * c_in + c0
                    for c in range(kw * nch):
                        dst[c] += src[c]
                    src += kw * nch
                    continue
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
    # (taps in the padding are skipped, which only a finite weight makes equal to adding zero)
    if _depthwise3d(&g) and (not _reaches_padding3d(&g)
                             or _all_finite(&weight[0, 0, 0], weight.shape[0] * weight.shape[1] * weight.shape[2])):
        _depthwise_forward_last(x, weight, &bias[0] if has_bias else NULL, out, &g, row_begin, row_end, n_threads)
        _conv3d_ran["forward"] = "depthwise"
        return
    # the direct kernel (_conv3d.pxi): weight[grp, t * C_in/groups + c, co]
    if _direct3d_applies(&g, batch, row_begin, row_end, floating is float, True) and _direct3d(
            &x[0, 0, 0, 0, 0], batch, &weight[0, 0, 0], g.taps * g.c_in_g * g.c_out_g, 1, g.c_out_g,
            g.c_in_g * g.c_out_g, &bias[0] if has_bias else NULL, &out[0, row_begin // g.out_h, 0, 0, 0],
            groups * g.c_out_g * g.n_out, 0, &g, row_begin // g.out_h, row_end // g.out_h, 0, g.depth, n_threads, True):
        _conv3d_ran["forward"] = "direct"
        return
    _conv3d_ran["forward"] = "tiles"
    _last_tiles(&g, batch, q_end - q_begin, n_threads)
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
    if _depthwise3d(&g):
        _depthwise_input_last(grad_out, weight, grad_in, &g, row_begin, row_end, n_threads)
        _conv3d_ran["input"] = "depthwise"
        return
    if stride_d == 1 and stride_h == 1 and stride_w == 1 and _direct_input3d(grad_out, weight, grad_in, &g,
                                                                             row_begin, row_end, n_threads, True):
        _conv3d_ran["input"] = "direct"
        return
    _conv3d_ran["input"] = "tiles"
    _last_tiles(&g, batch, q_end - q_begin, 0)
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
    """partial[grp] += vol2row(x[grp], tile)^T @ grad_out[tile, grp] for one image's tile and every group:
    the gradient transposed, (kD*kH*kW * C_in/groups, C_out/groups) per group (BLAS took 0.90 of the
    untransposed product's time on the C3D layer's tiles, 606 x 1728 x 64, one thread)."""
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
        _gemm(True, False, <int> g.col_rows, <int> g.c_out_g, <int> n, 1, rows, ld,
              grad_out + q0 * c_out + grp * g.c_out_g, <int> c_out, 1, partial + grp * g.c_out_g * g.col_rows,
              <int> g.c_out_g)


def conv3d_backward_weight_last(const floating[:, :, :, :, ::1] grad_out, const floating[:, :, :, :, ::1] x,
                                floating[:, ::1] grad_weight, int kernel_d, int kernel_h, int kernel_w,
                                int stride_d, int stride_h, int stride_w, int pad_d, int pad_h, int pad_w,
                                int dilation_d, int dilation_h, int dilation_w, int groups,
                                Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads):
    """grad_weight += sum_n grad_out[n, rows]^T @ vol2row(x[n], rows) over the output rows [row_begin,
    row_end), channels last; grad_weight is (C_out, kD*kH*kW * C_in/groups), tap-major. Each thread
    sums its tiles in its own partial (transposed per group); the partials are added in thread order
    after the parallel block."""
    cdef Conv3dGeometry g = _last_geometry(x.shape[4], x.shape[1], x.shape[2], x.shape[3], grad_out.shape[4],
                                           grad_out.shape[1], grad_out.shape[2], grad_out.shape[3],
                                           kernel_d, kernel_h, kernel_w, stride_d, stride_h, stride_w,
                                           pad_d, pad_h, pad_w, dilation_d, dilation_h, dilation_w, groups)
    cdef Py_ssize_t batch = x.shape[0], per_image, n_items, item, tid, col_size, i, t, grp, co, k
    cdef Py_ssize_t w_size = grad_weight.shape[0] * grad_weight.shape[1]
    cdef Py_ssize_t q_begin = row_begin * g.out_w, q_end = row_end * g.out_w
    if batch == 0 or row_end <= row_begin or g.n_out == 0 or w_size == 0:
        return
    # (taps in the padding are skipped, which only a finite grad_out makes equal to adding zero)
    if _depthwise3d(&g) and (not _reaches_padding3d(&g) or _all_finite(
            &grad_out[0, 0, 0, 0, 0], batch * g.n_out * g.groups * g.c_out_g)):
        _depthwise_weight_last(grad_out, x, grad_weight, &g, row_begin, row_end, n_threads)
        _conv3d_ran["weight"] = "depthwise"
        return
    if _direct_weight3d_applies(&g, row_begin, row_end, floating is float, True):
        _direct_weight3d(&grad_out[0, 0, 0, 0, 0], &x[0, 0, 0, 0, 0], batch, grad_weight, &g, row_begin // g.out_h,
                         row_end // g.out_h, n_threads, True)
        _conv3d_ran["weight"] = "direct"
        return
    _conv3d_ran["weight"] = "tiles"
    _last_tiles(&g, batch, q_end - q_begin, n_threads)
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
        for t in range(1, team):
            for i in range(w_size):
                parts[i] += parts[t * w_size + i]
        for grp in range(groups):
            for co in range(g.c_out_g):
                for k in range(g.col_rows):
                    total[(grp * g.c_out_g + co) * g.col_rows + k] += parts[(grp * g.col_rows + k) * g.c_out_g + co]


# One input channel per group (depthwise, any multiplier m = C_out / groups): a product per group
# of P voxels by kD*kH*kW taps by m filters leaves BLAS nothing to block (the benchmark's depthwise3d,
# 2x64x16x56x56 3x3x3, took 4-7x the channels-first kernels' time that way); these loops run along
# the channels instead, contiguous in every row, with the weight as (taps, C_out).

cdef void _depthwise_row_forward(const floating* x, const floating* weight, const floating* bias, floating* out,
                                 Conv3dGeometry* g, Py_ssize_t od, Py_ssize_t oh) noexcept nogil:
    """out[od, oh, :, co] = bias[co] + sum_taps x[tap's voxel, co // m] * weight[tap, co] for one output
    row of one image; weight is (taps, C_out)."""
    cdef Py_ssize_t c_out = g.groups * g.c_out_g, c_in = g.groups, m = g.c_out_g
    cdef Py_ssize_t ow, a, b, e, c, j, in_d, in_h, in_w, tap
    cdef floating* dst
    cdef const floating* src
    cdef const floating* w
    for ow in range(g.out_w):
        dst = out + ((od * g.out_h + oh) * g.out_w + ow) * c_out
        if bias != NULL:
            for c in range(c_out):
                dst[c] = bias[c]
        else:
            memset(dst, 0, c_out * sizeof(floating))
        for a in range(g.kernel[0]):
            in_d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
            if in_d < 0 or in_d >= g.depth:
                continue
            for b in range(g.kernel[1]):
                in_h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                if in_h < 0 or in_h >= g.height:
                    continue
                for e in range(g.kernel[2]):
                    in_w = ow * g.stride[2] - g.pad[2] + e * g.dilation[2]
                    if in_w < 0 or in_w >= g.width:
                        continue
                    tap = (a * g.kernel[1] + b) * g.kernel[2] + e
                    src = x + ((in_d * g.height + in_h) * g.width + in_w) * c_in
                    w = weight + tap * c_out
                    if m == 1:
                        for c in range(c_out):
                            dst[c] += src[c] * w[c]
                    else:
                        for c in range(c_in):
                            for j in range(m):
                                dst[c * m + j] += src[c] * w[c * m + j]


cdef int _depthwise_forward_last(const floating[:, :, :, :, ::1] x, const floating[:, :, ::1] weight,
                                 const floating* bias, floating[:, :, :, :, ::1] out, Conv3dGeometry* g,
                                 Py_ssize_t row_begin, Py_ssize_t row_end, int n_threads) except -1:
    """The forward of the output rows [row_begin, row_end) by _depthwise_row_forward, one (image, row)
    item at a time; weight as the forward's (groups, taps, m)."""
    cdef Py_ssize_t rows = row_end - row_begin, n_items = x.shape[0] * rows, item, r
    by_tap = np.ascontiguousarray(np.asarray(weight).transpose(1, 0, 2)).reshape(g.taps, -1)
    cdef const floating[:, ::1] w = by_tap
    with nogil:
        for item in prange(n_items, schedule='static', num_threads=_team(n_threads, n_items)):
            r = row_begin + item % rows
            _depthwise_row_forward(&x[item // rows, 0, 0, 0, 0], &w[0, 0], bias, &out[item // rows, 0, 0, 0, 0], g,
                                   r // g.out_h, r % g.out_h)
    return 0


cdef inline bint _tap_output(Py_ssize_t i, Py_ssize_t k, Conv3dGeometry* g, int axis, Py_ssize_t size,
                             Py_ssize_t* o) noexcept nogil:
    """Whether input position i is read by tap k of an output o along ``axis`` (o set where it is)."""
    cdef Py_ssize_t t = i + g.pad[axis] - k * g.dilation[axis]
    if t < 0 or t % g.stride[axis]:
        return False
    o[0] = t // g.stride[axis]
    return o[0] < size


cdef void _depthwise_row_input(const floating* grad_out, const floating* weight, floating* grad_in,
                               Conv3dGeometry* g, Py_ssize_t in_d, Py_ssize_t in_h, Py_ssize_t row_begin,
                               Py_ssize_t row_end) noexcept nogil:
    """grad_in[in_d, in_h, :, c] += sum over the taps and filters reading it from the output rows
    [row_begin, row_end) of grad_out[.., c*m + j] * weight[tap, c*m + j]: one input row gathered."""
    cdef Py_ssize_t c_out = g.groups * g.c_out_g, c_in = g.groups, m = g.c_out_g
    cdef Py_ssize_t iw, a, b, e, c, j, od, oh, ow, r, tap
    cdef floating* dst
    cdef const floating* src
    cdef const floating* w
    cdef floating total
    for a in range(g.kernel[0]):
        if not _tap_output(in_d, a, g, 0, g.out_d, &od):
            continue
        for b in range(g.kernel[1]):
            if not _tap_output(in_h, b, g, 1, g.out_h, &oh):
                continue
            r = od * g.out_h + oh
            if r < row_begin or r >= row_end:
                continue
            for iw in range(g.width):
                dst = grad_in + ((in_d * g.height + in_h) * g.width + iw) * c_in
                for e in range(g.kernel[2]):
                    if not _tap_output(iw, e, g, 2, g.out_w, &ow):
                        continue
                    tap = (a * g.kernel[1] + b) * g.kernel[2] + e
                    src = grad_out + (r * g.out_w + ow) * c_out
                    w = weight + tap * c_out
                    if m == 1:
                        for c in range(c_in):
                            dst[c] += src[c] * w[c]
                    else:
                        for c in range(c_in):
                            total = 0
                            for j in range(m):
                                total = total + src[c * m + j] * w[c * m + j]
                            dst[c] += total


cdef int _depthwise_input_last(const floating[:, :, :, :, ::1] grad_out, const floating[:, ::1] weight,
                               floating[:, :, :, :, ::1] grad_in, Conv3dGeometry* g, Py_ssize_t row_begin,
                               Py_ssize_t row_end, int n_threads) except -1:
    """grad_in += the input gradient of the output rows [row_begin, row_end), gathered per input row
    (_depthwise_row_input): each (image, input row) item writes its own row; weight is PyTorch's (C_out, taps)."""
    cdef Py_ssize_t rows = g.depth * g.height, n_items = grad_in.shape[0] * rows, item, r
    by_tap = np.ascontiguousarray(np.asarray(weight).T)
    cdef const floating[:, ::1] w = by_tap
    with nogil:
        for item in prange(n_items, schedule='static', num_threads=_team(n_threads, n_items)):
            r = item % rows
            _depthwise_row_input(&grad_out[item // rows, 0, 0, 0, 0], &w[0, 0], &grad_in[item // rows, 0, 0, 0, 0], g,
                                 r // g.height, r % g.height, row_begin, row_end)
    return 0


cdef void _depthwise_row_weight(const floating* grad_out, const floating* x, floating* partial, Conv3dGeometry* g,
                                Py_ssize_t od, Py_ssize_t oh) noexcept nogil:
    """partial[tap, co] += sum_ow grad_out[od, oh, ow, co] * x[tap's voxel, co // m] for one output row."""
    cdef Py_ssize_t c_out = g.groups * g.c_out_g, c_in = g.groups, m = g.c_out_g
    cdef Py_ssize_t ow, a, b, e, c, j, in_d, in_h, in_w, tap
    cdef floating* dst
    cdef const floating* src
    cdef const floating* dy
    for ow in range(g.out_w):
        dy = grad_out + ((od * g.out_h + oh) * g.out_w + ow) * c_out
        for a in range(g.kernel[0]):
            in_d = od * g.stride[0] - g.pad[0] + a * g.dilation[0]
            if in_d < 0 or in_d >= g.depth:
                continue
            for b in range(g.kernel[1]):
                in_h = oh * g.stride[1] - g.pad[1] + b * g.dilation[1]
                if in_h < 0 or in_h >= g.height:
                    continue
                for e in range(g.kernel[2]):
                    in_w = ow * g.stride[2] - g.pad[2] + e * g.dilation[2]
                    if in_w < 0 or in_w >= g.width:
                        continue
                    tap = (a * g.kernel[1] + b) * g.kernel[2] + e
                    src = x + ((in_d * g.height + in_h) * g.width + in_w) * c_in
                    dst = partial + tap * c_out
                    if m == 1:
                        for c in range(c_out):
                            dst[c] += dy[c] * src[c]
                    else:
                        for c in range(c_in):
                            for j in range(m):
                                dst[c * m + j] += dy[c * m + j] * src[c]


cdef int _depthwise_weight_last(const floating[:, :, :, :, ::1] grad_out, const floating[:, :, :, :, ::1] x,
                                floating[:, ::1] grad_weight, Conv3dGeometry* g, Py_ssize_t row_begin,
                                Py_ssize_t row_end, int n_threads) except -1:
    """grad_weight (C_out, taps) += the weight gradient of the output rows [row_begin, row_end): (image,
    output row) items summed into per-thread (taps, C_out) partials, added in thread order after."""
    cdef Py_ssize_t rows = row_end - row_begin, n_items = x.shape[0] * rows, item, r, t, tap, co
    cdef Py_ssize_t c_out = g.groups * g.c_out_g, w_size = g.taps * c_out
    cdef int team = _team(n_threads, n_items), tid
    cdef floating[:, ::1] parts = np.zeros((team, w_size), dtype=np.asarray(grad_weight).dtype)
    with nogil, parallel(num_threads=team):
        tid = threadid()
        for item in prange(n_items, schedule='static'):
            r = row_begin + item % rows
            _depthwise_row_weight(&grad_out[item // rows, 0, 0, 0, 0], &x[item // rows, 0, 0, 0, 0], &parts[tid, 0],
                                  g, r // g.out_h, r % g.out_h)
    with nogil:
        for t in range(1, team):
            for tap in range(w_size):
                parts[0, tap] += parts[t, tap]
        for co in range(c_out):
            for tap in range(g.taps):
                grad_weight[co, tap] += parts[0, tap * c_out + co]
    return 0
