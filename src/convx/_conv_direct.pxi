# The channels-last direct tiles (convx_direct_* in _direct_body.h): forward, input gradient (a
# stride-1 convolution of grad_out) and the weight gradient's three splits.

cdef enum:
    DIRECT_OFF = 0
    DIRECT_ROWS = 1
    DIRECT_IMAGES = 2


cdef inline bint _fills_lanes(Py_ssize_t channels, bint is_float) noexcept nogil:
    """Whether channels fill at least 3/4 of the direct kernels' lanes (the lanes past them are
    computed and dropped: lenet_c2's 50 filters in 64 lanes still ran in 0.85 of the packed
    path's time)."""
    cdef Py_ssize_t lanes = convx_direct_lanes_f(_level()) if is_float else convx_direct_lanes_d(_level())
    return 3 * ((channels + lanes - 1) // lanes * lanes) <= 4 * channels


cdef int _direct_choice(convx_conv_shape* s, Py_ssize_t batch, bint is_float, bint channels_last=False) noexcept nogil:
    """How convx_direct_conv_* takes a convolution of shape s (DIRECT_OFF: it does not): as
    _direct_mode_wanted, but not in rows whose channels-last copy of the rows read (their
    padding's columns, and the columns out to a last tile's spare pixels) would exceed
    _scratch_fits (images copy the images only, and skip the taps in the padding)."""
    cdef int mode = _direct_mode_wanted(s, batch, is_float, channels_last)
    cdef Py_ssize_t mr = convx_direct_rows_f(_level()) if is_float else convx_direct_rows_d(_level())
    cdef double in_rows
    if mode == DIRECT_ROWS:
        in_rows = min(<double> s.height, <double> ((s.out_h - 1) * s.sh + (s.kh - 1) * s.dh + 1))
        if not _scratch_fits(in_rows * <double> convx_direct_buffer_width(s, mr) * <double> (s.groups * s.c_in_g), s):
            return DIRECT_OFF
    return mode


cdef int _direct_mode_wanted(convx_conv_shape* s, Py_ssize_t batch, bint is_float, bint channels_last) noexcept nogil:
    """How convx_direct_conv_* would best take a convolution of shape s, scratch aside; with
    channels_last (input and output in that layout), also where it leaves lanes idle or the kernel
    is 1x1, which the other kernels would take only through two transposes."""
    cdef int level = _level()
    cdef Py_ssize_t rows, tile
    if level == CONVX_GEMM_BLAS or _dmode() == MODE_OFF or batch == 0 or s.c_out_g == 0 or s.c_in_g == 0:
        return DIRECT_OFF
    if s.ph < 0 or s.pw < 0 or s.kh * s.kw > CONVX_DIRECT_TAPS:
        return DIRECT_OFF
    if _dmode() == MODE_ROWS or _dmode() == MODE_OUTER:
        return DIRECT_ROWS
    if _dmode() == MODE_IMAGES:
        return DIRECT_IMAGES
    # A 1x1 kernel over whole planes stays a plain GEMM of the planes.
    if not channels_last and (not _fills_lanes(s.c_out_g, is_float) or convx_conv_flat(s)):
        return DIRECT_OFF
    rows = convx_direct_rows_f(level) if is_float else convx_direct_rows_d(level)
    # Rows shorter than a tile would leave some of its rows idle, and waste the padding's
    # columns: tile across the images, which skips every tap in the padding. So do rows whose
    # last tile is short enough that whole tiles would leave a quarter of their pixels idle
    # (the last tile computes only its pixels, but few of them run slower per product): on
    # AVX2's tiles of 5 and 6, deep_small's rows of 7 (5 + 2) took 89 ms in rows, 83 in
    # images; lenet_c2's rows of 8 (5 + 3) 3.8 and 4.3 ms.
    tile = convx_direct_row_tile(s, rows)
    if batch >= rows and (s.out_w < rows or 4 * s.out_w < 3 * ((s.out_w + tile - 1) // tile * tile)):
        return DIRECT_IMAGES
    return DIRECT_ROWS


cdef object _direct_pack(const floating* weight, Py_ssize_t s_g, Py_ssize_t s_m, Py_ssize_t s_c, Py_ssize_t s_t,
                         const floating* bias, convx_conv_shape* s, int n_threads, Py_ssize_t taps=0):
    """(packed weight, lane bias or None) for convx_direct_conv_rows / _images (convx_direct_pack_weight,
    each group's blocks of lanes; the bias padded to whole blocks), or None where a weight is not
    finite. Group grp's weight of output channel co, input channel c and tap t (t = i * kw + j) is
    weight[grp * s_g + co * s_m + c * s_c + t * s_t]; taps, where given, replaces kh * kw (the 3-D
    kernel's depth taps join them)."""
    cdef int level = _level(), team
    cdef Py_ssize_t k, lanes, blocks, u, co, grp, group_size
    if taps == 0:
        taps = s.kh * s.kw
    k = s.c_in_g * taps
    if floating is float:
        lanes = convx_direct_lanes_f(level)
        group_size = convx_direct_weight_size_f(level, s.c_out_g, k)
        dtype = np.float32
    else:
        lanes = convx_direct_lanes_d(level)
        group_size = convx_direct_weight_size_d(level, s.c_out_g, k)
        dtype = np.float64
    blocks = (s.c_out_g + lanes - 1) // lanes
    packed_array = np.empty(s.groups * group_size, dtype=dtype)
    cdef floating[::1] packed = packed_array
    lane_bias = None
    cdef floating[::1] lanes_view
    if bias != NULL:
        lane_bias = np.zeros(s.groups * blocks * lanes, dtype=dtype)
        lanes_view = lane_bias
        for grp in range(s.groups):
            for co in range(s.c_out_g):
                lanes_view[grp * blocks * lanes + co] = bias[grp * s.c_out_g + co]
    team = _team(n_threads, s.groups * blocks)
    cdef Py_ssize_t finite = 0
    with nogil:
        for u in prange(s.groups * blocks, schedule='static', num_threads=team):
            if floating is float:
                finite += convx_direct_pack_weight_f(level, weight + (u // blocks) * s_g, s.c_out_g, s.c_in_g,
                                                     taps, s_m, s_c, s_t, u % blocks,
                                                     &packed[(u // blocks) * group_size + (u % blocks) * k * lanes])
            else:
                finite += convx_direct_pack_weight_d(level, weight + (u // blocks) * s_g, s.c_out_g, s.c_in_g,
                                                     taps, s_m, s_c, s_t, u % blocks,
                                                     &packed[(u // blocks) * group_size + (u % blocks) * k * lanes])
    if finite < s.groups * blocks:
        return None
    return packed_array, lane_bias


cdef int _direct_conv(const floating* x, const floating* weight, Py_ssize_t s_g, Py_ssize_t s_m, Py_ssize_t s_c,
                      Py_ssize_t s_t, const floating* bias, const convx_epilogue* epi, floating* out,
                      convx_conv_shape* s, Py_ssize_t batch, int n_threads, int mode) except -1:
    """out = act(conv(x) + bias) (bias and the activation of epi where given) by
    convx_direct_conv_rows or _images (mode); the weight as _direct_pack takes it. Threads take
    whole images (or chunks of their output rows, or of their output channels, where the batch is
    too small to go round), each with its own channels-last buffer. Returns 0, having written
    nothing, where a weight is not finite (the caller then takes another path: see
    convx_direct_pack_weight)."""
    cdef int level = _level(), team, t
    cdef Py_ssize_t lanes, mr, blocks
    cdef Py_ssize_t group_size, n_items, per_image, chunk, buf_size, item, n, r0, r1, splits, chunks, b0, b1
    if floating is float:
        lanes = convx_direct_lanes_f(level)
        mr = convx_direct_rows_f(level)
        dtype = np.float32
    else:
        lanes = convx_direct_lanes_d(level)
        mr = convx_direct_rows_d(level)
        dtype = np.float64
    blocks = (s.c_out_g + lanes - 1) // lanes
    packing = _direct_pack(weight, s_g, s_m, s_c, s_t, bias, s, n_threads)
    if packing is None:
        return 0
    cdef floating[::1] packed = packing[0]
    group_size = packed.shape[0] // s.groups
    cdef floating[::1] lane_bias
    cdef const floating* b = NULL
    if packing[1] is not None:
        lane_bias = packing[1]
        b = &lane_bias[0]
    cdef Py_ssize_t image_in = s.groups * s.c_in_g * s.height * s.width
    cdef Py_ssize_t image_out = convx_out_image(s)
    cdef floating[::1] buf
    if mode == DIRECT_ROWS:
        per_image = 1
        if batch % n_threads:
            per_image = min(s.out_h, (4 * n_threads + batch - 1) // batch)
        chunk = (s.out_h + per_image - 1) // per_image
        n_items = batch * per_image
        team = _team(n_threads, n_items)
        buf_size = convx_direct_buffer_size(s, mr, chunk)
        buf = np.empty(team * buf_size, dtype=dtype)
        with nogil, parallel(num_threads=team):
            t = threadid()
            for item in prange(n_items, schedule='static'):
                n = item // per_image
                r0 = (item % per_image) * s.out_h // per_image
                r1 = (item % per_image + 1) * s.out_h // per_image
                if r0 < r1:
                    if floating is float:
                        convx_direct_conv_rows_f(level, s, &packed[0], group_size, b, epi, x + n * image_in,
                                                 out + n * image_out, r0, r1, &buf[t * buf_size])
                    else:
                        convx_direct_conv_rows_d(level, s, &packed[0], group_size, b, epi, x + n * image_in,
                                                 out + n * image_out, r0, r1, &buf[t * buf_size])
        return 1
    chunks = (batch + mr - 1) // mr
    splits = 1 if chunks % n_threads == 0 else min(s.groups * blocks, n_threads)
    n_items = chunks * splits
    team = _team(n_threads, n_items)
    buf_size = mr * image_in
    # zeros: the planes past a last chunk's images are read (into rows never stored)
    buf = np.zeros(team * buf_size, dtype=dtype)
    with nogil, parallel(num_threads=team):
        t = threadid()
        for item in prange(n_items, schedule='static'):
            n = (item // splits) * mr
            b0 = (item % splits) * s.groups * blocks // splits
            b1 = (item % splits + 1) * s.groups * blocks // splits
            if floating is float:
                convx_direct_conv_images_f(level, s, &packed[0], group_size, b, epi, x + n * image_in,
                                           out + n * image_out, min(mr, batch - n), b0, b1, &buf[t * buf_size])
            else:
                convx_direct_conv_images_d(level, s, &packed[0], group_size, b, epi, x + n * image_in,
                                           out + n * image_out, min(mr, batch - n), b0, b1, &buf[t * buf_size])
    return 1


cdef enum:
    # how _direct_weight_gradient splits the work between threads
    DIRECT_BY_CHANNELS = 1
    DIRECT_BY_IMAGES = 2
    # _direct_outer_weight_gradient instead
    DIRECT_OUTER = 3
    # Largest per-thread partial (elements) the split over images sums.
    DIRECT_PARTIAL_MOST = 1 << 18
    # Largest channels-last copy of one image (bytes) for which the weight gradient splits over
    # images or channels (channels first, 3x3 padding 1); above it, DIRECT_OUTER. GFLOP/s split /
    # outer, 1 thread, Intel Xeon (KVM, family 6 model 167, AVX-512, 2 MiB L2 per core):
    #   copy 0.41 MiB (16x128->128 28x28) 151 / 146; 0.79 (16x64->64 56x56) 137 / 133;
    #   0.82 (16x256->256 28x28) 145 / 136; 1.19 (8x96->64 56x56) 117 / 135;
    #   1.59 (8x128->64 56x56) 94 / 143, (8x128->128 56x56) 127 / 129, (8x64->64 80x80) 99 / 115;
    #   2.38 (8x192->64 56x56) 84 / 153, (2x192->64) 65 / 143; 3.17 (8x256->64 56x56) 74 / 157;
    #   float64: 3.09 MiB (4x96->64 64x64) 26 / 35, 4.76 (4x192->64 56x56) 29 / 54.
    # No layer of the 2-D benchmark has a copy above it (the largest, vgg_3x3: 0.79 MiB), so the
    # rules measured on the EPYCs are unchanged there.
    DIRECT_SPLIT_IMAGE_MOST = 1 << 20
    # Bytes of one thread's buffer in _direct_outer_weight_gradient (a band of output rows' input
    # rows zero-padded and its grad_out rows channels last), as _outer3d_bytes for the volumes.
    DIRECT_OUTER_BAND_BYTES = 4 << 20
    # Bytes of grad_out rows below which _direct_outer_weight_gradient does not cut an image into
    # bands for more items: each band copies the input rows its windows reach, zero-padded. Weight
    # gradient / PyTorch, whole images (the kernel before bands) against bands (Xeon family 6 model
    # 167, 2 threads, alternating processes, medians of 9): lenet_c2 (64 images, 640 B rows of
    # grad_out) 0.58-0.64 whole, 0.83-0.87 in bands of 2 rows, 0.57-0.65 at this bound (whole);
    # resnet_3x3_s2 (16 images, 14 KiB rows) 1.04-1.07 whole, 1.01-1.12 in bands of 19 rows;
    # resnet_stem (8 images, 28 KiB rows) 0.84-0.88 whole, 0.78-0.79 in bands of 28 rows.
    DIRECT_OUTER_BAND_LEAST = 256 << 10


cdef int _direct_weight_choice(convx_conv_shape* s, Py_ssize_t batch, bint is_float, int n_threads,
                               bint channels_last=False) noexcept nogil:
    """_direct_weight_wanted, or DIRECT_OFF where its channels-last copy of an image (all its
    rows; the padding's columns, and for DIRECT_OUTER its rows, zero) would exceed _scratch_fits."""
    cdef int split = _direct_weight_wanted(s, batch, is_float, n_threads, channels_last)
    cdef int level = _level()
    cdef double copy, part
    cdef double weight = <double> (s.groups * s.c_out_g * s.c_in_g) * <double> (s.kh * s.kw)
    if split == DIRECT_OFF:
        return split
    if split == DIRECT_OUTER:
        copy = _padded_planes(s, s.groups * s.c_in_g)
        part = convx_direct_outer_part_size_f(level, s) if is_float else convx_direct_outer_part_size_d(level, s)
    else:
        copy = <double> s.height * <double> convx_direct_buffer_width(s, 1) * <double> (s.groups * s.c_in_g)
        if is_float:
            part = convx_direct_weight_part_size_f(level, s, s.groups * convx_direct_weight_tiles_f(level, s))
        else:
            part = convx_direct_weight_part_size_d(level, s, s.groups * convx_direct_weight_tiles_d(level, s))
    # The partials hold whole register tiles of output by input channels for every tap: for few
    # channels a multiple of the weight (2 -> 4 channels of a 256x256 kernel: 64 MiB for a 2 MiB weight).
    if not _scratch_fits(copy, s) or part > SCRATCH_IMAGE_MULTIPLE * weight + SCRATCH_SLACK:
        return DIRECT_OFF
    return split


cdef int _direct_weight_wanted(convx_conv_shape* s, Py_ssize_t batch, bint is_float, int n_threads,
                               bint channels_last) noexcept nogil:
    """How _direct_weight_gradient takes the weight gradient of shape s: DIRECT_OFF (it does not),
    DIRECT_BY_IMAGES (threads take shares of the batch, each summing a whole partial) or
    DIRECT_BY_CHANNELS (threads take shares of the output channels, each reading every image),
    or, for few input channels, DIRECT_OUTER (_direct_outer_weight_gradient). The forced modes
    force them too: 'rows' split by images where the batch allows, 'images' by channels. With
    channels_last (grad_out and x in that layout), also where the lanes are not filled, which the
    other kernels would take only through transposes."""
    cdef int level = _level()
    cdef Py_ssize_t tiles, part
    cdef double copy
    if level == CONVX_GEMM_BLAS or _dmode() == MODE_OFF or batch == 0 or s.c_out_g == 0 or s.c_in_g == 0:
        return DIRECT_OFF
    if s.ph < 0 or s.pw < 0:
        return DIRECT_OFF
    if _dmode() == MODE_ROWS:
        return DIRECT_BY_IMAGES
    if _dmode() == MODE_IMAGES:
        return DIRECT_BY_CHANNELS
    if _dmode() == MODE_OUTER:
        return DIRECT_OUTER
    # The output channels as lanes where they fill them and the input channels do not, or the
    # stride makes grad_out the smaller tensor to copy channels-last (resnet_3x3_s2: 0.93 of
    # the other way's time).
    if _fills_lanes(s.c_out_g, is_float) and s.kh * s.kw > 1:
        if not _fills_lanes(s.c_in_g, is_float) or s.sh * s.sw > 1:
            return DIRECT_OUTER
    if channels_last and s.kh * s.kw > 1 and not _fills_lanes(s.c_in_g, is_float):
        return DIRECT_OUTER
    if not channels_last and (not _fills_lanes(s.c_in_g, is_float) or convx_conv_flat(s)):
        return DIRECT_OFF
    # The split kernels read a whole image's channels-last copy once per tile of output channels:
    # beyond L2 each pass comes from memory, while the outer kernel reads a band of rows at a time.
    copy = (<double> s.height * <double> convx_direct_buffer_width(s, 1) * <double> (s.groups * s.c_in_g)
            * (4 if is_float else 8))
    if not channels_last and _fills_lanes(s.c_out_g, is_float) and s.kh * s.kw > 1 and copy > DIRECT_SPLIT_IMAGE_MOST:
        return DIRECT_OUTER
    if is_float:
        tiles = s.groups * convx_direct_weight_tiles_f(level, s)
        part = convx_direct_weight_part_size_f(level, s, tiles)
    else:
        tiles = s.groups * convx_direct_weight_tiles_d(level, s)
        part = convx_direct_weight_part_size_d(level, s, tiles)
    if batch >= n_threads and part <= DIRECT_PARTIAL_MOST:
        return DIRECT_BY_IMAGES
    return DIRECT_BY_CHANNELS


cdef int _direct_weight_gradient(const floating* grad_out, const floating* x, convx_conv_shape* s,
                                 Py_ssize_t batch, floating* grad_weight, int n_threads, int split) except -1:
    """grad_weight = sum over the batch's pixels of grad_out x im2col(x)^T by
    convx_direct_weight_images, the work split as _direct_weight_choice chose. Returns 0 where
    the result is not finite (grad_weight then holds garbage, and the caller recomputes it on a
    path that multiplies the padding's zeros, as the taps this one skips would)."""
    cdef int level = _level(), team, t
    cdef bint by_images = split == DIRECT_BY_IMAGES
    cdef Py_ssize_t tiles, n_tiles, share, part_size, image_size, per_chunk, buf_size
    cdef Py_ssize_t u0, u1, n0, n1, n, c, finite = 0
    cdef Py_ssize_t image_in = s.groups * s.c_in_g * s.height * s.width
    cdef Py_ssize_t image_out = s.groups * s.c_out_g * s.out_h * s.out_w
    if floating is float:
        tiles = convx_direct_weight_tiles_f(level, s)
        image_size = convx_direct_weight_image_size_f(level, s)
        dtype = np.float32
    else:
        tiles = convx_direct_weight_tiles_d(level, s)
        image_size = convx_direct_weight_image_size_d(level, s)
        dtype = np.float64
    n_tiles = s.groups * tiles
    team = _team(n_threads, batch if by_images else n_tiles)
    share = n_tiles if by_images else (n_tiles + team - 1) // team
    if floating is float:
        part_size = convx_direct_weight_part_size_f(level, s, share)
    else:
        part_size = convx_direct_weight_part_size_d(level, s, share)
    # images per pass: their channels-last copies about 256 KB (in L2 beside the partial), or 8
    per_chunk = max(1, min(8, (1 << 16) // max(1, image_size)))
    buf_size = per_chunk * image_size + 64
    cdef floating[::1] parts = np.zeros(team * part_size, dtype=dtype)
    cdef floating[::1] buf = np.empty(team * buf_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            if by_images:
                u0 = 0
                u1 = n_tiles
                n0 = t * batch // team
                n1 = (t + 1) * batch // team
            else:
                u0 = t * n_tiles // team
                u1 = (t + 1) * n_tiles // team
                n0 = 0
                n1 = batch
            n = n0
            while n < n1:
                c = min(per_chunk, n1 - n)
                if floating is float:
                    convx_direct_weight_images_f(level, s, grad_out + n * image_out, x + n * image_in, c, u0, u1,
                                                 &parts[t * part_size], &buf[t * buf_size])
                else:
                    convx_direct_weight_images_d(level, s, grad_out + n * image_out, x + n * image_in, c, u0, u1,
                                                 &parts[t * part_size], &buf[t * buf_size])
                n = n + c
            if not by_images:
                if floating is float:
                    finite += convx_direct_weight_store_f(level, s, &parts[t * part_size], u0, u1, grad_weight)
                else:
                    finite += convx_direct_weight_store_d(level, s, &parts[t * part_size], u0, u1, grad_weight)
        if by_images:
            _sum_partials(&parts[0], team, part_size, &parts[0])
            if floating is float:
                finite = team * convx_direct_weight_store_f(level, s, &parts[0], 0, n_tiles, grad_weight)
            else:
                finite = team * convx_direct_weight_store_d(level, s, &parts[0], 0, n_tiles, grad_weight)
    return finite == team


cdef int _direct_outer_weight_gradient(const floating* grad_out, const floating* x, convx_conv_shape* s,
                                       Py_ssize_t batch, floating* grad_weight, int n_threads) except -1:
    """grad_weight (overwritten) by _outer3d_weight, each image taken as a volume of one-row slices:
    threads take (image, band of output rows) items, so that a batch smaller than the threads keeps
    them all busy and an image's grad_out need not fit L2."""
    cdef convx_conv_shape rows = s[0]
    cdef convx_depth_axis axis
    cdef Py_ssize_t row_bytes = max(1, s.groups * s.c_out_g * s.out_w * <Py_ssize_t> sizeof(floating))
    cdef Py_ssize_t band
    rows.height = 1
    rows.out_h = 1
    rows.kh = 1
    rows.sh = 1
    rows.ph = 0
    rows.dh = 1
    axis.depth = s.height
    axis.kd = s.kh
    axis.sd = s.sh
    axis.pd = s.ph
    axis.dd = s.dh
    axis.lo = 0
    axis.hi = s.height
    # no band of less than DIRECT_OUTER_BAND_LEAST bytes of grad_out rows
    band = _outer3d_band(_level(), &rows, &axis, s.out_h, DIRECT_OUTER_BAND_BYTES,
                         (DIRECT_OUTER_BAND_LEAST + row_bytes - 1) // row_bytes, n_threads, floating is float)
    _outer3d_weight(grad_out, x, batch, &rows, &axis, s, s.out_h, 0, s.out_h, band, n_threads, grad_weight)
    return 1


cdef int _direct_input_mode(ConvGeometry* g, convx_conv_shape* a, bint is_float, bint channels_last=False) noexcept nogil:
    """The direct kernel's mode for the input gradient of a stride-1 convolution, which is the
    convolution a of grad_out with W^T's taps reversed, padded by dilation * (kernel - 1) - pad
    (DIRECT_OFF for other strides, or where that padding is negative)."""
    if g.stride_h != 1 or g.stride_w != 1:
        return DIRECT_OFF
    a.groups = g.groups
    a.c_in_g = g.c_out_g
    a.c_out_g = g.c_in_g
    a.height = g.out_h
    a.width = g.out_w
    a.out_h = g.height
    a.out_w = g.width
    a.kh = g.kernel_h
    a.kw = g.kernel_w
    a.sh = 1
    a.sw = 1
    a.ph = g.dilation_h * (g.kernel_h - 1) - g.pad_h
    a.pw = g.dilation_w * (g.kernel_w - 1) - g.pad_w
    a.dh = g.dilation_h
    a.dw = g.dilation_w
    a.x_last = channels_last
    a.out_last = channels_last
    a.o_h = a.out_h
    a.o_w = a.out_w
    a.o_sh = 1
    a.o_sw = 1
    a.o_cs = 0
    return _direct_choice(a, g.batch, is_float, channels_last)


cdef int _direct_input_gradient(const floating* grad_out, const floating* weight, floating* grad_in,
                                ConvGeometry* g, convx_conv_shape* a, int n_threads, int mode) except -1:
    """grad_in by _direct_conv on the shape _direct_input_mode gave: its output channel is W's
    input channel ci, its input channel W's output channel co, its tap t W's tap taps - 1 - t.
    Returns 0 where _direct_conv declines (a weight not finite)."""
    cdef Py_ssize_t taps = g.kernel_h * g.kernel_w
    return _direct_conv(grad_out, weight + (taps - 1), g.c_out_g * g.col_rows, taps, g.col_rows, -1, NULL, NULL,
                        grad_in, a, g.batch, n_threads, mode)


# A strided convolution's input gradient as stride_h x stride_w stride-1 convolutions of grad_out,
# one per phase of the input (the pixels (r_h + stride_h * q, r_w + stride_w * p) for one (r_h,
# r_w)): a tap i of the kernel lands on an input of phase r only where stride divides
# r + pad - i * dilation, so each phase reads a subgrid of the taps, nothing of the zeros that
# dilating grad_out by the stride would insert. Channels last only, where a phase is a strided
# view of grad_in; more phases than PHASES_MOST decline (each is a call of the kernels).
cdef enum:
    PHASES_MOST = 64


cdef struct PhaseTaps:
    Py_ssize_t first     # the kernel's first tap that lands on the phase, or -1: none does
    Py_ssize_t count     # its taps: first, first + step, ... (count of them)
    Py_ssize_t step
    Py_ssize_t pad       # the phase convolution's padding and dilation (over grad_out)
    Py_ssize_t dilation
    Py_ssize_t size      # the phase's inputs r, r + stride, ... below the input's size


cdef inline Py_ssize_t _gcd(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while b:
        a, b = b, a % b
    return a


cdef void _phase_taps(Py_ssize_t r, Py_ssize_t size, Py_ssize_t kernel, Py_ssize_t stride, Py_ssize_t pad,
                      Py_ssize_t dilation, PhaseTaps* p) noexcept nogil:
    """The taps of one axis of the kernel that land on phase r of the input (r < stride): tap i
    reaches input r + stride * q from grad_out's q + (r + pad - i * dilation) / stride, so the
    last of them is the phase convolution's first tap (its padding minus that offset)."""
    cdef Py_ssize_t g = _gcd(stride, dilation), i, last, reach
    p.step = stride // g
    p.dilation = dilation // g
    p.size = (size - r + stride - 1) // stride if size > r else 0
    p.first = -1
    p.count = 0
    p.pad = 0
    for i in range(min(kernel, p.step)):
        reach = r + pad - i * dilation
        if ((reach % stride) + stride) % stride == 0:
            p.first = i
            break
    if p.first < 0:
        return
    p.count = (kernel - 1 - p.first) // p.step + 1
    last = p.first + (p.count - 1) * p.step
    p.pad = -((r + pad - last * dilation) // stride)  # (an exact division)


cdef int _phase_shape(ConvGeometry* g, PhaseTaps* rows, PhaseTaps* cols, convx_conv_shape* a) noexcept nogil:
    """a := the phase's stride-1 convolution of channels-last grad_out (as _direct_input_mode
    for stride 1), written into every stride_h-th row and stride_w-th column of grad_in."""
    a.groups = g.groups
    a.c_in_g = g.c_out_g
    a.c_out_g = g.c_in_g
    a.height = g.out_h
    a.width = g.out_w
    a.out_h = rows.size
    a.out_w = cols.size
    a.kh = rows.count
    a.kw = cols.count
    a.sh = 1
    a.sw = 1
    a.ph = rows.pad
    a.pw = cols.pad
    a.dh = rows.dilation
    a.dw = cols.dilation
    a.x_last = 1
    a.out_last = 1
    a.o_h = g.height
    a.o_w = g.width
    a.o_sh = g.stride_h
    a.o_sw = g.stride_w
    a.o_cs = 0
    return 0


cdef bint _phased_input_gradient(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] weight,
                                 floating[:, :, :, ::1] grad_in, ConvGeometry* g, int n_threads, int* first_mode) except -1:
    """grad_in (channels last) of a strided convolution by the direct kernels, phase by phase; returns
    False, having written nothing, where they do not take every phase (first_mode: the first
    phase's mode). A phase that no tap reaches is zero."""
    cdef Py_ssize_t n_phases = g.stride_h * g.stride_w, phase, rh, rw, taps
    cdef PhaseTaps row_taps[PHASES_MOST]
    cdef PhaseTaps col_taps[PHASES_MOST]
    cdef convx_conv_shape a
    cdef int mode
    cdef const floating[:, :, :, ::1] sub
    if n_phases > PHASES_MOST:
        return False
    for rh in range(g.stride_h):
        _phase_taps(rh, g.height, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, &row_taps[rh])
    for rw in range(g.stride_w):
        _phase_taps(rw, g.width, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, &col_taps[rw])
    # each phase's mode: DIRECT_OFF for a phase with no inputs or no taps
    modes = []
    for phase in range(n_phases):
        rh = phase // g.stride_w
        rw = phase % g.stride_w
        if row_taps[rh].size == 0 or col_taps[rw].size == 0 or row_taps[rh].first < 0 or col_taps[rw].first < 0:
            modes.append(DIRECT_OFF)
            continue
        _phase_shape(g, &row_taps[rh], &col_taps[rw], &a)
        mode = _direct_choice(&a, g.batch, floating is float, True)
        if mode == DIRECT_OFF:
            return False
        modes.append(mode)
    if not any(modes):
        return False
    # every weight finite, or no phase would run (each packs its subgrid of the weight and declines otherwise)
    w = np.asarray(weight)
    if not np.isfinite(w).all():
        return False
    out = np.asarray(grad_in)
    first_mode[0] = DIRECT_OFF
    for phase in range(n_phases):
        rh = phase // g.stride_w
        rw = phase % g.stride_w
        if row_taps[rh].size == 0 or col_taps[rw].size == 0:
            continue
        if modes[phase] == DIRECT_OFF:
            out[:, rh::g.stride_h, rw::g.stride_w, :] = 0
            continue
        mode = modes[phase]
        if first_mode[0] == DIRECT_OFF:
            first_mode[0] = mode
        _phase_shape(g, &row_taps[rh], &col_taps[rw], &a)
        # the phase's subgrid of the kernel, its taps then reversed as _direct_input_gradient's
        sub = np.ascontiguousarray(w[:, :, row_taps[rh].first::row_taps[rh].step, col_taps[rw].first::col_taps[rw].step])
        taps = a.kh * a.kw
        _direct_conv(&grad_out[0, 0, 0, 0], &sub[0, 0, 0, 0] + (taps - 1), g.c_out_g * g.c_in_g * taps, taps,
                     g.c_in_g * taps, -1, NULL, NULL, &grad_in[0, rh, rw, 0], &a, g.batch, n_threads, mode)
    return True


cdef bint _transposed_wanted(ConvGeometry* g, bint is_float) noexcept nogil:
    """Whether _transposed_input_gradient takes the channels-last input gradient of g: where its
    input channels would leave a quarter of the adjoint convolution's lanes idle (a stem's 3 fill 3
    of 32). VGG-style 3->32 3x3 32x32, batch 64 (Xeon family 6 model 167, AVX-512, 2 threads,
    medians of 11 interleaved runs, machine shared): 1.00 ms this way against 1.00 channels first;
    the direct kernels took 8.6 ms."""
    if _level() == CONVX_GEMM_BLAS or _dmode() != MODE_AUTO or g.batch == 0 or g.c_in_g == 0 or g.c_out_g == 0:
        return False
    return g.kernel_h * g.kernel_w > 1 and not _fills_lanes(g.c_in_g, is_float)


cdef int _transposed_input_gradient(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] weight,
                                    floating[:, :, :, ::1] grad_in, ConvGeometry* g, int n_threads) except -1:
    """grad_in (channels last) by the channels-first im2col tiles, one image at a time: each
    thread's GEMM reads its image of grad_out channels last (packing B's strips from pixel rows),
    col2im writes a channels-first image in its own buffer (in cache), which is transposed into
    grad_in."""
    cdef WeightProduct wp
    packed = _pack_weight(weight, g.groups, True, &wp)
    cdef int level = _level(), t
    cdef Py_ssize_t plane = g.height * g.width, n
    cdef Py_ssize_t c_in = g.groups * g.c_in_g
    cdef Py_ssize_t col_size = _col_size(g)
    cdef Py_ssize_t work_size = _product_work_size(&wp, floating is float)
    cdef Py_ssize_t image_size = c_in * plane
    cdef int team = _team(n_threads, g.batch)
    dtype = np.asarray(grad_in).dtype
    cdef floating[::1] col = np.empty(team * col_size, dtype=dtype)
    cdef floating[::1] work = np.empty(team * work_size, dtype=dtype)
    cdef floating[::1] images = np.empty(team * image_size, dtype=dtype)
    cdef floating* gx
    with _blas_limit(wp.level == CONVX_GEMM_BLAS):
        with nogil, parallel(num_threads=team):
            t = threadid()
            for n in prange(g.batch, schedule='static'):
                gx = &images[t * image_size]
                _backward_input_image_last(&grad_out[n, 0, 0, 0], &wp, gx, g, &col[t * col_size],
                                           &work[t * work_size])
                # (C_in x plane) -> (plane x C_in)
                if floating is float:
                    convx_direct_row_nhwc_f(level, gx, plane, c_in, plane, &grad_in[n, 0, 0, 0], c_in)
                else:
                    convx_direct_row_nhwc_d(level, gx, plane, c_in, plane, &grad_in[n, 0, 0, 0], c_in)
    return wp.level
