# The geometry every entry point shares, and the im2col / col2im tiles with a GEMM per tile
# (BLAS, or for the input gradient convx's product): the path where no other applies.

cdef inline convx_conv_shape _conv_shape(ConvGeometry* g) noexcept nogil:
    cdef convx_conv_shape s
    s.groups = g.groups
    s.c_in_g = g.c_in_g
    s.c_out_g = g.c_out_g
    s.height = g.height
    s.width = g.width
    s.out_h = g.out_h
    s.out_w = g.out_w
    s.kh = g.kernel_h
    s.kw = g.kernel_w
    s.sh = g.stride_h
    s.sw = g.stride_w
    s.ph = g.pad_h
    s.pw = g.pad_w
    s.dh = g.dilation_h
    s.dw = g.dilation_w
    s.x_last = 0
    s.out_last = 0
    s.o_h = g.out_h
    s.o_w = g.out_w
    s.o_sh = 1
    s.o_sw = 1
    s.o_cs = 0
    return s


cdef inline void _valid_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size, Py_ssize_t out_size,
                              Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the outputs o with 0 <= o * stride + offset < size."""
    cdef Py_ssize_t first = 0, last
    if offset < 0:
        first = (-offset + stride - 1) // stride
    if size - 1 - offset < 0:
        last = 0
    else:
        last = (size - 1 - offset) // stride + 1
    if first > out_size:
        first = out_size
    if last > out_size:
        last = out_size
    if last < first:
        last = first
    lo[0] = first
    hi[0] = last


cdef struct ConvGeometry:
    Py_ssize_t batch, groups
    Py_ssize_t c_in_g, c_out_g
    Py_ssize_t height, width, out_h, out_w
    Py_ssize_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    Py_ssize_t col_rows        # c_in_g * kernel_h * kernel_w
    Py_ssize_t chunk_rows      # output rows per tile (out_h unless one image is split)
    Py_ssize_t chunk_cols      # output columns per tile (out_w unless one row's columns exceed COL_BUDGET)
    Py_ssize_t block           # whole images per tile (1 unless planes are small)
    bint direct_1x1            # the input plane is already the column matrix


cdef inline void _clip_range(Py_ssize_t col0, Py_ssize_t col1, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi) := [lo, hi) within [col0, col1), as offsets from col0."""
    lo[0] = min(max(lo[0], col0), col1) - col0
    hi[0] = min(max(hi[0], col0 + lo[0]), col1) - col0


cdef void _im2col(const floating* image, ConvGeometry* g, Py_ssize_t row0, Py_ssize_t row1, Py_ssize_t col0,
                  Py_ssize_t col1, floating* col, Py_ssize_t ld) noexcept nogil:
    """col[(c, i, j) * ld + (oh - row0) * (col1 - col0) + ow - col0] = image[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
    (0 outside) for output rows [row0, row1) and columns [col0, col1)."""
    cdef Py_ssize_t c, i, j, oh, ow, ih, iw0, lo, hi, n = col1 - col0
    cdef floating* dst
    cdef const floating* src
    for c in range(g.c_in_g):
        for i in range(g.kernel_h):
            for j in range(g.kernel_w):
                iw0 = j * g.dilation_w - g.pad_w
                _valid_range(iw0, g.stride_w, g.width, g.out_w, &lo, &hi)
                _clip_range(col0, col1, &lo, &hi)
                dst = col + ((c * g.kernel_h + i) * g.kernel_w + j) * ld
                for oh in range(row0, row1):
                    ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                    if ih < 0 or ih >= g.height:
                        memset(dst, 0, n * sizeof(floating))
                    else:
                        # output column col0 + ow reads src[ow * stride_w]
                        src = image + (c * g.height + ih) * g.width + iw0 + col0 * g.stride_w
                        for ow in range(lo):
                            dst[ow] = 0
                        if g.stride_w == 1:
                            for ow in range(lo, hi):
                                dst[ow] = src[ow]
                        elif g.stride_w == 2:
                            # A literal stride lets the compiler vectorise the gather.
                            for ow in range(lo, hi):
                                dst[ow] = src[2 * ow]
                        else:
                            for ow in range(lo, hi):
                                dst[ow] = src[ow * g.stride_w]
                        for ow in range(hi, n):
                            dst[ow] = 0
                    dst += n


cdef void _col2im(const floating* col, ConvGeometry* g, Py_ssize_t row0, Py_ssize_t row1, Py_ssize_t col0,
                  Py_ssize_t col1, floating* image, Py_ssize_t ld) noexcept nogil:
    """image[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] += col[(c, i, j) * ld + (oh - row0) * (col1 - col0) + ow - col0]
    (adjoint of _im2col)."""
    cdef Py_ssize_t c, i, j, oh, ow, ih, iw0, lo, hi, n = col1 - col0
    cdef const floating* src
    cdef floating* dst
    for c in range(g.c_in_g):
        for i in range(g.kernel_h):
            for j in range(g.kernel_w):
                iw0 = j * g.dilation_w - g.pad_w
                _valid_range(iw0, g.stride_w, g.width, g.out_w, &lo, &hi)
                _clip_range(col0, col1, &lo, &hi)
                src = col + ((c * g.kernel_h + i) * g.kernel_w + j) * ld
                for oh in range(row0, row1):
                    ih = oh * g.stride_h - g.pad_h + i * g.dilation_h
                    if ih >= 0 and ih < g.height:
                        dst = image + (c * g.height + ih) * g.width + iw0 + col0 * g.stride_w
                        if g.stride_w == 1:
                            for ow in range(lo, hi):
                                dst[ow] += src[ow]
                        elif g.stride_w == 2:
                            for ow in range(lo, hi):
                                dst[2 * ow] += src[ow]
                        else:
                            for ow in range(lo, hi):
                                dst[ow * g.stride_w] += src[ow]
                    src += n


cdef ConvGeometry _geometry(Py_ssize_t batch, Py_ssize_t c_in, Py_ssize_t height, Py_ssize_t width,
                            Py_ssize_t c_out, Py_ssize_t kernel_h, Py_ssize_t kernel_w,
                            Py_ssize_t out_h, Py_ssize_t out_w, int groups,
                            int stride_h, int stride_w, int pad_h, int pad_w,
                            int dilation_h, int dilation_w, int n_threads):
    cdef ConvGeometry g
    cdef Py_ssize_t n_out = out_h * out_w
    cdef Py_ssize_t per_image, most, wanted
    g.batch = batch
    g.groups = groups
    g.c_in_g = c_in // groups
    g.c_out_g = c_out // groups
    g.height = height
    g.width = width
    g.out_h = out_h
    g.out_w = out_w
    g.kernel_h = kernel_h
    g.kernel_w = kernel_w
    g.stride_h = stride_h
    g.stride_w = stride_w
    g.pad_h = pad_h
    g.pad_w = pad_w
    g.dilation_h = dilation_h
    g.dilation_w = dilation_w
    g.col_rows = g.c_in_g * kernel_h * kernel_w
    g.direct_1x1 = (kernel_h == 1 and kernel_w == 1 and stride_h == 1 and stride_w == 1
                    and pad_h == 0 and pad_w == 0 and out_h == height and out_w == width)
    g.chunk_rows = out_h
    g.chunk_cols = out_w
    if not g.direct_1x1 and g.col_rows * n_out > COL_BUDGET:
        g.chunk_rows = max(1, COL_BUDGET // (g.col_rows * out_w))
        if g.col_rows * out_w > COL_BUDGET:
            # A kernel much larger than the image (padded as far): the columns of one output row
            # would be kernel x output width, a multiple of the weight (a 256x256 kernel over a
            # 1x1 image with padding 255: 256 MiB per thread). Tiles of a row's columns instead.
            g.chunk_cols = max(1, COL_BUDGET // g.col_rows)
    g.block = 1
    if n_out < MIN_GEMM_COLS and batch > 1:
        wanted = (MIN_GEMM_COLS + n_out - 1) // n_out
        per_image = (g.col_rows + g.c_out_g) * n_out
        most = max(1, COL_BUDGET // per_image)
        g.block = min(wanted, most, (batch + n_threads - 1) // n_threads)
        if g.block > 1:
            g.direct_1x1 = False
            # The block tiles take whole images (and their scratch is sized so); the budget
            # test above already implies this, stated here because the tiles rely on it.
            g.chunk_rows = out_h
            g.chunk_cols = out_w
    return g


cdef void _split_rows(ConvGeometry* g, int n_threads) noexcept nogil:
    """Shrink the row chunks so that a batch smaller than the team still gives every thread work."""
    cdef Py_ssize_t want
    if g.batch >= n_threads or g.block > 1:
        return
    want = (n_threads + g.batch - 1) // g.batch
    if want > g.out_h:
        want = g.out_h
    g.chunk_rows = min(g.chunk_rows, (g.out_h + want - 1) // want)


cdef inline Py_ssize_t _n_blocks(ConvGeometry* g, int n_threads) noexcept nogil:
    """Tiles of whole images: at most g.block images each, and (where the batch allows) a
    multiple of the team, so that no thread idles while another finishes a last block."""
    cdef Py_ssize_t n_blocks = (g.batch + g.block - 1) // g.block
    if g.block > 1 and n_blocks % n_threads:
        n_blocks = min(g.batch, (n_blocks + n_threads - 1) // n_threads * n_threads)
    return n_blocks


cdef inline Py_ssize_t _block_start(ConvGeometry* g, Py_ssize_t item, Py_ssize_t n_blocks) noexcept nogil:
    """First image of tile ``item`` of ``n_blocks`` near-equal tiles of the batch."""
    return item * g.batch // n_blocks


cdef inline Py_ssize_t _col_size(ConvGeometry* g) noexcept nogil:
    if g.direct_1x1:
        return 1
    return g.col_rows * g.block * g.chunk_rows * g.chunk_cols


cdef inline Py_ssize_t _gathered_size(ConvGeometry* g) noexcept nogil:
    if g.block == 1:
        return 1
    return g.c_out_g * g.block * g.out_h * g.out_w


cdef void _gather(const floating* grad_out, ConvGeometry* g, Py_ssize_t grp, Py_ssize_t n_images,
                  floating* gathered) noexcept nogil:
    """gathered[m, b * n_out + p] = grad_out[b, grp * c_out_g + m, p]: the block's images side by side."""
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t image_stride = g.groups * g.c_out_g * n_out
    cdef Py_ssize_t ld = n_images * n_out
    cdef Py_ssize_t b, m, p
    cdef const floating* src
    cdef floating* dst
    for m in range(g.c_out_g):
        for b in range(n_images):
            src = grad_out + b * image_stride + (grp * g.c_out_g + m) * n_out
            dst = gathered + m * ld + b * n_out
            for p in range(n_out):
                dst[p] = src[p]


cdef void _scatter(const floating* gathered, ConvGeometry* g, Py_ssize_t grp, Py_ssize_t n_images,
                   floating* out) noexcept nogil:
    """out[b, grp * c_out_g + m, p] = gathered[m, b * n_out + p] (inverse of _gather)."""
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t image_stride = g.groups * g.c_out_g * n_out
    cdef Py_ssize_t ld = n_images * n_out
    cdef Py_ssize_t b, m, p
    cdef const floating* src
    cdef floating* dst
    for m in range(g.c_out_g):
        for b in range(n_images):
            src = gathered + m * ld + b * n_out
            dst = out + b * image_stride + (grp * g.c_out_g + m) * n_out
            for p in range(n_out):
                dst[p] = src[p]


cdef void _columns(const floating* images, ConvGeometry* g, Py_ssize_t grp, Py_ssize_t n_images,
                   Py_ssize_t row0, Py_ssize_t row1, Py_ssize_t col0, Py_ssize_t col1, floating* col) noexcept nogil:
    """The column matrix of group grp for images [0, n_images), output rows [row0, row1) and columns
    [col0, col1), side by side."""
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t n_cols = (row1 - row0) * (col1 - col0)
    cdef Py_ssize_t b
    for b in range(n_images):
        _im2col(images + (b * g.groups + grp) * g.c_in_g * plane, g, row0, row1, col0, col1,
                col + b * n_cols, n_images * n_cols)


cdef void _forward_tile(const floating* x, const floating* weight, floating* out, ConvGeometry* g,
                        Py_ssize_t n_images, Py_ssize_t row0, Py_ssize_t row1,
                        floating* col, floating* gathered) noexcept nogil:
    """out[b, grp, :, rows] = W_grp @ im2col(x[b, grp], rows) for the tile's images b and every group,
    by BLAS (convx's own GEMM packs its columns itself: _implicit_conv)."""
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t n_cols = (row1 - row0) * g.out_w
    cdef Py_ssize_t grp, col0, col1
    cdef const floating* w_grp
    for grp in range(g.groups):
        w_grp = weight + grp * g.c_out_g * g.col_rows
        if g.direct_1x1:
            _gemm(False, False, g.c_out_g, n_cols, g.col_rows, 1, w_grp, g.col_rows,
                  x + grp * g.c_in_g * plane + row0 * g.out_w, plane,
                  0, out + grp * g.c_out_g * n_out + row0 * g.out_w, n_out)
            continue
        if n_images > 1:
            _columns(x, g, grp, n_images, row0, row1, 0, g.out_w, col)
            _gemm(False, False, g.c_out_g, n_images * n_cols, g.col_rows, 1, w_grp, g.col_rows,
                  col, n_images * n_cols, 0, gathered, n_images * n_cols)
            _scatter(gathered, g, grp, n_images, out)
            continue
        # whole rows, or (chunk_cols < out_w, one row) a part of one
        col0 = 0
        while col0 < g.out_w:
            col1 = min(col0 + g.chunk_cols, g.out_w)
            n_cols = (row1 - row0) * (col1 - col0)
            _columns(x, g, grp, 1, row0, row1, col0, col1, col)
            _gemm(False, False, g.c_out_g, n_cols, g.col_rows, 1, w_grp, g.col_rows, col, n_cols,
                  0, out + grp * g.c_out_g * n_out + row0 * g.out_w + col0, n_out)
            col0 = col1


cdef void _backward_input_tile(const floating* grad_out, WeightProduct* wp, floating* grad_in,
                               ConvGeometry* g, Py_ssize_t n_images,
                               floating* col, floating* gathered, floating* work) noexcept nogil:
    """grad_in[b] = col2im(W_grp^T @ grad_out[b, grp]) for the tile's whole images; grad_in is overwritten."""
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t image_in = g.groups * g.c_in_g * plane
    cdef Py_ssize_t grp, row0, row1, col0, col1, n_cols, b
    if not g.direct_1x1:
        memset(grad_in, 0, n_images * image_in * sizeof(floating))
    for grp in range(g.groups):
        if n_images > 1:
            _gather(grad_out, g, grp, n_images, gathered)
            _product(wp, grp, n_images * n_out, gathered, n_images * n_out, col, n_images * n_out, work)
            for b in range(n_images):
                _col2im(col + b * n_out, g, 0, g.out_h, 0, g.out_w, grad_in + b * image_in + grp * g.c_in_g * plane,
                        n_images * n_out)
            continue
        row0 = 0
        while row0 < g.out_h:
            row1 = min(row0 + g.chunk_rows, g.out_h)
            if g.direct_1x1:
                n_cols = (row1 - row0) * g.out_w
                _product(wp, grp, n_cols, grad_out + grp * g.c_out_g * n_out + row0 * g.out_w, n_out,
                         grad_in + grp * g.c_in_g * plane + row0 * g.out_w, plane, work)
                row0 = row1
                continue
            col0 = 0
            while col0 < g.out_w:
                col1 = min(col0 + g.chunk_cols, g.out_w)
                n_cols = (row1 - row0) * (col1 - col0)
                _product(wp, grp, n_cols, grad_out + grp * g.c_out_g * n_out + row0 * g.out_w + col0, n_out,
                         col, n_cols, work)
                _col2im(col, g, row0, row1, col0, col1, grad_in + grp * g.c_in_g * plane, n_cols)
                col0 = col1
            row0 = row1


cdef void _backward_input_image_last(const floating* grad_out, WeightProduct* wp, floating* grad_in,
                                    ConvGeometry* g, floating* col, floating* work) noexcept nogil:
    """grad_in = col2im(W_grp^T @ grad_out_grp^T) for one image: _backward_input_tile's product
    with grad_out channels last (out_h x out_w x C_out), grad_in channels first, overwritten."""
    cdef Py_ssize_t plane = g.height * g.width, c_out = g.groups * g.c_out_g
    cdef Py_ssize_t grp, row0, row1, col0, col1, n_cols
    cdef const floating* go
    if not g.direct_1x1:
        memset(grad_in, 0, g.groups * g.c_in_g * plane * sizeof(floating))
    for grp in range(g.groups):
        row0 = 0
        while row0 < g.out_h:
            row1 = min(row0 + g.chunk_rows, g.out_h)
            col0 = 0
            while col0 < g.out_w:
                col1 = min(col0 + g.chunk_cols, g.out_w)
                n_cols = (row1 - row0) * (col1 - col0)
                go = grad_out + (row0 * g.out_w + col0) * c_out + grp * g.c_out_g
                if g.direct_1x1:
                    _product_t(wp, grp, n_cols, go, c_out, grad_in + grp * g.c_in_g * plane + row0 * g.out_w + col0,
                               plane, work)
                else:
                    _product_t(wp, grp, n_cols, go, c_out, col, n_cols, work)
                    _col2im(col, g, row0, row1, col0, col1, grad_in + grp * g.c_in_g * plane, n_cols)
                col0 = col1
            row0 = row1


cdef void _backward_weight_tile(const floating* grad_out, const floating* x, floating* grad_weight,
                                ConvGeometry* g, Py_ssize_t n_images,
                                floating* col, floating* gathered) noexcept nogil:
    """grad_weight_grp += grad_out[b, grp] @ im2col(x[b, grp])^T summed over the tile's whole images."""
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t grp, row0, row1, col0, col1, n_cols
    cdef floating* dw_grp
    for grp in range(g.groups):
        dw_grp = grad_weight + grp * g.c_out_g * g.col_rows
        if n_images > 1:
            _gather(grad_out, g, grp, n_images, gathered)
            _columns(x, g, grp, n_images, 0, g.out_h, 0, g.out_w, col)
            _gemm(False, True, g.c_out_g, g.col_rows, n_images * n_out, 1, gathered, n_images * n_out,
                  col, n_images * n_out, 1, dw_grp, g.col_rows)
            continue
        row0 = 0
        while row0 < g.out_h:
            row1 = min(row0 + g.chunk_rows, g.out_h)
            if g.direct_1x1:
                n_cols = (row1 - row0) * g.out_w
                _gemm(False, True, g.c_out_g, g.col_rows, n_cols, 1,
                      grad_out + grp * g.c_out_g * n_out + row0 * g.out_w, n_out,
                      x + grp * g.c_in_g * plane + row0 * g.out_w, plane, 1, dw_grp, g.col_rows)
                row0 = row1
                continue
            col0 = 0
            while col0 < g.out_w:
                col1 = min(col0 + g.chunk_cols, g.out_w)
                n_cols = (row1 - row0) * (col1 - col0)
                _columns(x, g, grp, 1, row0, row1, col0, col1, col)
                _gemm(False, True, g.c_out_g, g.col_rows, n_cols, 1,
                      grad_out + grp * g.c_out_g * n_out + row0 * g.out_w + col0, n_out, col, n_cols,
                      1, dw_grp, g.col_rows)
                col0 = col1
            row0 = row1


cdef extern from "_simd.h" nogil:
    void convx_prefetch(const void* p, size_t bytes)
    int convx_all_finite_f(const float* x, Py_ssize_t n)
    int convx_all_finite_d(const double* x, Py_ssize_t n)
    float convx_sum_f(const float* x, Py_ssize_t n)
    double convx_sum_d(const double* x, Py_ssize_t n)


cdef inline floating _plane_sum(const floating* plane, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return convx_sum_f(plane, n)
    else:
        return convx_sum_d(plane, n)


cdef void _bias_grad_images(const floating* grad_out, floating* grad_bias, Py_ssize_t n_images,
                            Py_ssize_t channels, Py_ssize_t n_out) noexcept nogil:
    cdef Py_ssize_t b, c
    for b in range(n_images):
        for c in range(channels):
            grad_bias[c] += _plane_sum(grad_out + (b * channels + c) * n_out, n_out)


cdef void _sum_partials(floating* partials, Py_ssize_t n_parts, Py_ssize_t size, floating* out) noexcept nogil:
    cdef Py_ssize_t t, i
    for i in range(size):
        out[i] = partials[i]
    for t in range(1, n_parts):
        for i in range(size):
            out[i] += partials[t * size + i]
