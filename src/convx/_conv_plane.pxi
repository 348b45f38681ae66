# The plane-wise forward: output pixels as the lanes (convx_plane_conv in _plane_body.h).

cdef enum:
    # Depths (input channels per group x taps) up to which convx_plane_conv takes a forward (on
    # AVX2, against the packed and channels-last paths, float32 and float64): where its vectors
    # cover the output rows with at most 15% idle (1->32, 3->64 and 16->32 3x3 layers on 28-32
    # pixel rows in 0.7-0.9 of the other paths' time, 3->64 7x7 0.9), and where they do not but
    # the output channels are too few for the channels-last lanes (LeNet's 1->20 5x5 on rows of
    # 24: 0.58 ms against 1.04; 1->6 5x5 on rows of 10: 0.19 against 0.26). 8->32 3x3 on rows of
    # 10 took 0.73 ms against the channels-last 0.49. Also the most elements of the per-thread
    # copy of one image's padded planes.
    PLANE_DEPTH_COVERED = 160
    PLANE_DEPTH_FEW_CHANNELS = 75
    PLANE_BUFFER = 1 << 22


cdef inline bint _plane_choice(convx_conv_shape* s, Py_ssize_t batch, bint is_float) noexcept nogil:
    """Whether convx_plane_conv takes the forward of shape s."""
    cdef Py_ssize_t depth = s.c_in_g * s.kh * s.kw, lanes, covered
    if _level() == CONVX_GEMM_BLAS or batch == 0 or s.c_out_g == 0 or s.c_in_g == 0:
        return False
    if s.sw != 1 or s.ph < 0 or s.pw < 0 or depth > CONVX_PLANE_DEPTH:
        return False
    if _padded_planes(s, s.c_in_g) > PLANE_BUFFER or not _scratch_fits(_padded_planes(s, s.c_in_g), s):
        return False
    if _dmode() == MODE_PLANE:
        return True
    # Measured on AVX2 only (an AVX2 EPYC): on AVX-512 the other kernels' choices stand.
    if _dmode() != MODE_AUTO or _level() != CONVX_GEMM_AVX2 or convx_conv_flat(s):
        return False
    lanes = convx_plane_lanes_f(_level()) if is_float else convx_plane_lanes_d(_level())
    covered = (s.out_w + lanes - 1) // lanes * lanes
    if 20 * s.out_w >= 17 * covered:
        return depth <= PLANE_DEPTH_COVERED
    return depth <= PLANE_DEPTH_FEW_CHANNELS and not _fills_lanes(s.c_out_g, is_float)


cdef int _plane_conv(const floating* x, const floating* weight, const floating* bias, floating* out,
                     convx_conv_shape* s, Py_ssize_t batch, int n_threads) except -1:
    """out = conv(x) (bias added where given) by convx_plane_conv, for a shape _plane_choice took.
    Threads take equal shares of the items (image, group, block of output channels), in order,
    so that consecutive items of one image share its padded copy."""
    cdef int level = _level(), team, t
    cdef Py_ssize_t depth = s.c_in_g * s.kh * s.kw, lanes, blocks, group_size, buf_size, grp, n_items, lo, hi
    if floating is float:
        lanes = convx_plane_channels_f(level)
        group_size = convx_plane_weight_size_f(level, s.c_out_g, depth)
        buf_size = convx_plane_buffer_size_f(level, s)
        dtype = np.float32
    else:
        lanes = convx_plane_channels_d(level)
        group_size = convx_plane_weight_size_d(level, s.c_out_g, depth)
        buf_size = convx_plane_buffer_size_d(level, s)
        dtype = np.float64
    blocks = (s.c_out_g + lanes - 1) // lanes
    cdef floating[::1] packed = np.empty(s.groups * group_size, dtype=dtype)
    with nogil:
        for grp in range(s.groups):
            if floating is float:
                convx_plane_pack_weight_f(level, weight + grp * s.c_out_g * depth, s.c_out_g, depth,
                                          &packed[grp * group_size])
            else:
                convx_plane_pack_weight_d(level, weight + grp * s.c_out_g * depth, s.c_out_g, depth,
                                          &packed[grp * group_size])
    n_items = batch * s.groups * blocks
    team = _team(n_threads, n_items)
    cdef floating[::1] buf = np.empty(team * buf_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            lo = t * n_items // team
            hi = (t + 1) * n_items // team
            if floating is float:
                convx_plane_conv_f(level, s, &packed[0], group_size, bias, x, out, lo, hi, &buf[t * buf_size])
            else:
                convx_plane_conv_d(level, s, &packed[0], group_size, bias, x, out, lo, hi, &buf[t * buf_size])
    return 0
