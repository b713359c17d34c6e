"""The Numba code behind `kernels`: imported only when the fused path is first used.

Everything is defined at module level, so Numba's on-disk cache (next to this file, or under
$NUMBA_CACHE_DIR) finds the compiled kernels again in a new process.
"""

# mypy: disable-error-code="no-untyped-def, misc, no-any-return, call-arg"

from __future__ import annotations

from typing import Final

import numba
import numpy as np
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# Row pairs of the state the kernel prefetches ahead of the one it works on, and floats per
# 64-byte cache line (one prefetch each).
PREFETCH_AHEAD: Final = 2
FLOATS_PER_LINE: Final = 16

# Typed-pointer LLVM (before 15) mangles the intrinsic by pointee type.
_PREFETCH = "llvm.prefetch.p0" if binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, array, index):
    """`prefetch(flat_array, index)`: LLVM's prefetch (for writing, into every cache level) of
    the cache line holding `flat_array[index]`. It changes no value."""

    def codegen(context, builder, signature, args):
        arraytype = signature.args[0]
        struct = context.make_array(arraytype)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, arraytype, struct, [args[1]])
        bytes_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [bytes_ptr, i32, i32, i32]), _PREFETCH
        )
        # (address, 1 = for writing, 3 = keep in all levels, 1 = data cache)
        flags = [ir.Constant(i32, value) for value in (1, 3, 1)]
        builder.call(function, [builder.bitcast(pointer, bytes_ptr), *flags])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@numba.njit(nogil=True, cache=True, boundscheck=False)
def rope_attend_update(S, xs, cos, sin, x, heads, out):
    """S (R, N, D), xs (R, N), cos/sin (B, N), x (B, D), out (R, D); R = B * heads.

    Which row pairs a token touches depends on its activations, so the hardware cannot guess
    the next one: the kernel lists them first and prefetches PREFETCH_AHEAD pairs ahead, which
    hides most of the memory latency once the states outgrow the cache.
    """
    R, N, D = S.shape
    flat = S.reshape(-1)
    active = np.empty(N // 2, np.int64)
    for r in range(R):
        b = r // heads
        xb, c, s, v, o = x[b], cos[b], sin[b], xs[r], out[r]
        for d in range(D):
            o[d] = 0.0
        count = 0
        for i in range(0, N, 2):
            if v[i] != 0.0 or v[i + 1] != 0.0:
                active[count] = i
                count += 1
        for j in range(-PREFETCH_AHEAD, count):
            ahead = j + PREFETCH_AHEAD
            if ahead < count:
                start = (r * N + active[ahead]) * D
                for offset in range(0, 2 * D, FLOATS_PER_LINE):
                    prefetch(flat, start + offset)
            if j < 0:
                continue
            i = active[j]
            v0, v1 = v[i], v[i + 1]
            # rope(): q = v * cos + v_rot * sin with v_rot = (-v[2i+1], v[2i]).
            q0 = v0 * c[i] + (-v1) * s[i]
            q1 = v1 * c[i + 1] + v0 * s[i + 1]
            row0, row1 = S[r, i], S[r, i + 1]
            for d in range(D):
                s0, s1 = row0[d], row1[d]
                o[d] += q0 * s0
                o[d] += q1 * s1
                row0[d] = s0 + q0 * xb[d]
                row1[d] = s1 + q1 * xb[d]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def sparse_decode(xs, ys, decoder, m):
    """m (B, D) = (xs * relu(ys)) @ decoder, reading only the decoder rows of non-zero products.

    xs (B, nh*N) is a ReLU output; ys (nh, B, N) holds the values before their ReLU (only
    positive ones count, which is that ReLU); decoder (nh*N, D). About 1 product in 10 is
    non-zero, so this reads a tenth of the decoder a dense product would.
    """
    nh, B, N = ys.shape
    D = decoder.shape[1]
    for b in range(B):
        mb, xb = m[b], xs[b]
        for d in range(D):
            mb[d] = 0.0
        for h in range(nh):
            yb = ys[h, b]
            for n in range(N):
                if yb[n] <= 0.0:
                    continue
                k = h * N + n
                z = xb[k] * yb[n]
                if z == 0.0:
                    continue
                row = decoder[k]
                for d in range(D):
                    mb[d] += z * row[d]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def matmul_rows(rows, weight, out):
    """out (B, J) = rows (B, K) @ weight (K, J).

    Each weight row is read once for all B rows (a small-batch product, where a BLAS spends
    its time packing), and every element is summed over k in order, so a row's result never
    depends on the other rows: bit-identical alone or in any batch.
    """
    B, K = rows.shape
    J = weight.shape[1]
    for b in range(B):
        ob = out[b]
        for j in range(J):
            ob[j] = 0.0
    for k in range(K):
        w = weight[k]
        for b in range(B):
            value = rows[b, k]
            ob = out[b]
            for j in range(J):
                ob[j] += value * w[j]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def layer_norm_row(v, out):
    """out = LayerNorm(v) over its length, without affine weights (eps 1e-5); the mean and
    variance are summed in float64. `out` may be `v`."""
    D = v.shape[0]
    total = 0.0
    for d in range(D):
        total += v[d]
    mean = total / D
    square = 0.0
    for d in range(D):
        t = v[d] - mean
        square += t * t
    rstd = 1.0 / np.sqrt(square / D + 1e-5)
    for d in range(D):
        out[d] = (v[d] - mean) * rstd


@numba.njit(nogil=True, cache=True, boundscheck=False)
def decode_rows(tokens, cos, sin, states, embed, encoder, encoder_v, decoder, lm_head, logits):
    """One whole decode step of B sequences, in the order of `BDH._decode_rows`.

    tokens (B,) int64; cos/sin (B, N) of the RoPE angles; states: one (B, nh, N, D) float32
    array per layer, updated in place; embed (V, D); encoder (D, nh*N), the decode layout;
    encoder_v (nh, D, N); decoder (nh*N, D); lm_head (D, V); logits (B, V) is written.
    Every row is computed on its own, in a fixed order: the same token, position and state
    give bit-identical logits and state whatever else is in the batch.
    """
    B = tokens.shape[0]
    _, nh, N, D = states[0].shape
    x = np.empty((B, D), np.float32)
    xs = np.empty((B, nh * N), np.float32)
    a = np.empty((B * nh, D), np.float32)
    normed = np.empty((nh, B, D), np.float32)
    ys = np.empty((nh, B, N), np.float32)
    m = np.empty((B, D), np.float32)
    for b in range(B):
        layer_norm_row(embed[tokens[b]], x[b])
    for layer in range(len(states)):
        matmul_rows(x, encoder, xs)  # xs = relu(x @ encoder)
        for b in range(B):
            row = xs[b]
            for j in range(nh * N):
                if row[j] < 0.0:
                    row[j] = 0.0
        S = states[layer].reshape(B * nh, N, D)
        rope_attend_update(S, xs.reshape(B * nh, N), cos, sin, x, nh, a)
        for b in range(B):
            for h in range(nh):
                layer_norm_row(a[b * nh + h], normed[h, b])
        for h in range(nh):
            matmul_rows(normed[h], encoder_v[h], ys[h])  # ReLU'd inside sparse_decode
        sparse_decode(xs, ys, decoder, m)
        for b in range(B):
            layer_norm_row(m[b], m[b])
            for d in range(D):
                m[b, d] += x[b, d]
            layer_norm_row(m[b], x[b])  # x = LN(x + LN(m))
    matmul_rows(x, lm_head, logits)
