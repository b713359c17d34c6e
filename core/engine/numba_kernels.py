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
    """xs, ys (B, nh*N), decoder (nh*N, D), m (B, D): m = (xs * ys) @ decoder."""
    B, K = xs.shape
    D = decoder.shape[1]
    for b in range(B):
        mb, xb, yb = m[b], xs[b], ys[b]
        for d in range(D):
            mb[d] = 0.0
        for k in range(K):
            z = xb[k] * yb[k]
            if z == 0.0:
                continue
            row = decoder[k]
            for d in range(D):
                mb[d] += z * row[d]
