"""The Numba code behind `kernels` and `sampling.sample_rows`: imported on first use.

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
# Weight rows `matmul_rows` adds per pass over its output (the code spells out eight).
K_UNROLL: Final = 8

# Typed-pointer LLVM (before 15) mangles the intrinsic by pointee type.
_PREFETCH = "llvm.prefetch.p0" if binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"


def _prefetch_codegen(write: int):
    """LLVM's prefetch of the cache line holding `matrix[row, column]`, into every cache
    level; `write` 1 asks for the line to be written (the state), 0 to be read (weights)."""

    def codegen(context, builder, signature, args):
        arraytype = signature.args[0]
        struct = context.make_array(arraytype)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, arraytype, struct, [args[1], args[2]])
        bytes_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [bytes_ptr, i32, i32, i32]), _PREFETCH
        )
        # (address, read or write, 3 = keep in all levels, 1 = data cache)
        flags = [ir.Constant(i32, value) for value in (write, 3, 1)]
        builder.call(function, [builder.bitcast(pointer, bytes_ptr), *flags])
        return context.get_dummy_value()

    return codegen


@intrinsic
def prefetch(typingctx, array, row, column):
    """`prefetch(matrix, row, column)`: prefetch for writing the cache line holding
    `matrix[row, column]`. It changes no value."""
    return types.void(array, row, column), _prefetch_codegen(1)


@intrinsic
def prefetch_read(typingctx, array, row, column):
    """`prefetch_read(matrix, row, column)`: `prefetch` for reading only."""
    return types.void(array, row, column), _prefetch_codegen(0)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def rope_attend_update(S, h, xs, cos, sin, x, out):
    """Head h of one layer for B sequences: S (B, nh, N, D) the layer's state, C-contiguous;
    xs (B, N) the head's activations, cos/sin (B, N), x (B, D); out (B, D) is written.

    The whole layer's state comes in, not a view of one head: indexing a C-contiguous array
    by its leading dimensions gives rows Numba knows are contiguous, so the loop over D
    compiles to vector instructions (a strided view of one head made it scalar, 3-4x slower).

    Which row pairs a token touches depends on its activations, so the hardware cannot guess
    the next one: the kernel lists them first and prefetches PREFETCH_AHEAD pairs ahead, which
    hides most of the memory latency once the states outgrow the cache.
    """
    B, _, N, D = S.shape
    active = np.empty(N // 2, np.int64)
    for b in range(B):
        Sr, xb, c, s, v, o = S[b, h], x[b], cos[b], sin[b], xs[b], out[b]
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
                for offset in range(0, D, FLOATS_PER_LINE):
                    prefetch(Sr, active[ahead], offset)
                    prefetch(Sr, active[ahead] + 1, offset)
            if j < 0:
                continue
            i = active[j]
            v0, v1 = v[i], v[i + 1]
            # rope(): q = v * cos + v_rot * sin with v_rot = (-v[2i+1], v[2i]).
            q0 = v0 * c[i] + (-v1) * s[i]
            q1 = v1 * c[i + 1] + v0 * s[i + 1]
            row0, row1 = Sr[i], Sr[i + 1]
            for d in range(D):
                s0, s1 = row0[d], row1[d]
                o[d] += q0 * s0
                o[d] += q1 * s1
                row0[d] = s0 + q0 * xb[d]
                row1[d] = s1 + q1 * xb[d]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def sparse_decode_head(xs, ys, decoder, m):
    """m (B, D) = (xs * relu(ys)) @ decoder rows of one head, reading only the decoder rows
    of non-zero products.

    xs (B, N) is the head's ReLU output; ys (B, N) its values before their ReLU (only
    positive ones count, which is that ReLU); decoder (N, D), the head's rows. A row of the
    decoder is read once for the whole batch, for the sequences whose product there is not
    zero, in the order of n: each row of m gets the same sums alone as in any batch. Which
    rows a step needs depends on its activations, so they are listed first and prefetched
    PREFETCH_AHEAD rows ahead, as the state pass does.
    """
    B, N = ys.shape
    D = decoder.shape[1]
    for b in range(B):
        mb = m[b]
        for d in range(D):
            mb[d] = 0.0
    active = np.empty(N, np.int64)
    count = 0
    for n in range(N):
        for b in range(B):
            y = ys[b, n]
            if y > 0.0 and xs[b, n] * y != 0.0:
                active[count] = n
                count += 1
                break
    for j in range(-PREFETCH_AHEAD, count):
        ahead = j + PREFETCH_AHEAD
        if ahead < count:
            for offset in range(0, D, FLOATS_PER_LINE):
                prefetch_read(decoder, active[ahead], offset)
        if j < 0:
            continue
        n = active[j]
        row = decoder[n]
        for b in range(B):
            y = ys[b, n]
            if y <= 0.0:
                continue
            z = xs[b, n] * y
            if z == 0.0:
                continue
            mb = m[b]
            for d in range(D):
                mb[d] += z * row[d]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def matmul_rows(rows, weight, out):
    """out (B, J) = rows (B, K) @ weight (K, J), weight C-contiguous.

    Each weight row is read once for all B rows (a small-batch product, where a BLAS spends
    its time packing), and every element is summed over k in order, so a row's result never
    depends on the other rows: bit-identical alone or in any batch.

    The loop takes K_UNROLL weight rows at a time and adds their terms to an output element
    one after the other, in the order of k: the same sums, but the output row is loaded and
    stored once per K_UNROLL rows instead of once per row, which made the product bound by
    the output's round trips through the cache rather than by reading the weights (2-3x).
    """
    B, K = rows.shape
    J = weight.shape[1]
    for b in range(B):
        ob = out[b]
        for j in range(J):
            ob[j] = 0.0
    k = 0
    while k + K_UNROLL <= K:
        w0, w1, w2, w3 = weight[k], weight[k + 1], weight[k + 2], weight[k + 3]
        w4, w5, w6, w7 = weight[k + 4], weight[k + 5], weight[k + 6], weight[k + 7]
        for b in range(B):
            r = rows[b]
            v0, v1, v2, v3 = r[k], r[k + 1], r[k + 2], r[k + 3]
            v4, v5, v6, v7 = r[k + 4], r[k + 5], r[k + 6], r[k + 7]
            ob = out[b]
            for j in range(J):
                t = ob[j] + v0 * w0[j]
                t = t + v1 * w1[j]
                t = t + v2 * w2[j]
                t = t + v3 * w3[j]
                t = t + v4 * w4[j]
                t = t + v5 * w5[j]
                t = t + v6 * w6[j]
                ob[j] = t + v7 * w7[j]
        k += K_UNROLL
    while k < K:
        w = weight[k]
        for b in range(B):
            value = rows[b, k]
            ob = out[b]
            for j in range(J):
                ob[j] += value * w[j]
        k += 1


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
def embed_rows(tokens, embed, x):
    """x (B, D) = LayerNorm(embed[tokens]): the input of the first layer."""
    for b in range(tokens.shape[0]):
        layer_norm_row(embed[tokens[b]], x[b])


@numba.njit(nogil=True, cache=True, boundscheck=False)
def layer_heads(S, x, cos, sin, encoder, encoder_v, decoder, first, last, m_heads):
    """Heads first..last-1 of one layer for B sequences; each head's share of m is written
    to m_heads[h] (B, D), so heads can run on different threads and `combine_heads` adds
    them in one fixed order.

    S (B, nh, N, D) is the layer's state, updated in place; x (B, D) the layer's input;
    cos/sin (B, N); encoder and encoder_v (nh, D, N), decoder (nh*N, D). Every product
    reads a head's weights as one C-contiguous block: a column slice of a (D, nh*N) encoder
    compiled to scalar code and ran 3-5x slower.
    """
    B, _, N, D = S.shape
    xs = np.empty((B, N), np.float32)
    a = np.empty((B, D), np.float32)
    normed = np.empty((B, D), np.float32)
    ys = np.empty((B, N), np.float32)
    for h in range(first, last):
        matmul_rows(x, encoder[h], xs)  # xs = relu(x @ encoder_h)
        for b in range(B):
            row = xs[b]
            for j in range(N):
                if row[j] < 0.0:
                    row[j] = 0.0
        rope_attend_update(S, h, xs, cos, sin, x, a)
        for b in range(B):
            layer_norm_row(a[b], normed[b])
        matmul_rows(normed, encoder_v[h], ys)  # ReLU'd inside sparse_decode_head
        sparse_decode_head(xs, ys, decoder[h * N : (h + 1) * N], m_heads[h])


@numba.njit(nogil=True, cache=True, boundscheck=False)
def combine_heads(m_heads, x):
    """x = LN(x + LN(m)) with m the sum of the heads' shares, added in head order."""
    nh, B, D = m_heads.shape
    m = np.empty(D, np.float32)
    for b in range(B):
        for d in range(D):
            m[d] = m_heads[0, b, d]
        for h in range(1, nh):
            for d in range(D):
                m[d] += m_heads[h, b, d]
        layer_norm_row(m, m)
        for d in range(D):
            m[d] += x[b, d]
        layer_norm_row(m, x[b])


@numba.njit(nogil=True, cache=True, boundscheck=False)
def decode_rows(tokens, cos, sin, states, embed, encoder, encoder_v, decoder, lm_head, logits):
    """One whole decode step of B sequences, in the order of `BDH._decode_rows`.

    tokens (B,) int64; cos/sin (B, N) of the RoPE angles; states: one (B, nh, N, D) float32
    array per layer, updated in place; embed (V, D); encoder and encoder_v (nh, D, N);
    decoder (nh*N, D); lm_head (D, V); logits (B, V) is written.
    Every row is computed on its own, in a fixed order: the same token, position and state
    give bit-identical logits and state whatever else is in the batch, and whether the heads
    of a layer run here or on several threads (`kernels.decode_rows_by_heads`).
    """
    B = tokens.shape[0]
    _, nh, _, D = states[0].shape
    x = np.empty((B, D), np.float32)
    m_heads = np.empty((nh, B, D), np.float32)
    embed_rows(tokens, embed, x)
    for layer in range(len(states)):
        layer_heads(states[layer], x, cos, sin, encoder, encoder_v, decoder, 0, nh, m_heads)
        combine_heads(m_heads, x)
    matmul_rows(x, lm_head, logits)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def rotate_pairs(v, cos, sin, out):
    """RoPE of float32 activations v (R, T, N) by cos and sin (T, N) into out (R, T, N), in
    `model.rotate`'s arithmetic: out = v * cos + v_rot * sin with v_rot = (-v[2i+1], v[2i])."""
    R, T, N = v.shape
    for r in range(R):
        for t in range(T):
            vr, orow, c, s = v[r, t], out[r, t], cos[t], sin[t]
            for i in range(0, N, 2):
                v0, v1 = vr[i], vr[i + 1]
                orow[i] = v0 * c[i] + (-v1) * s[i]
                orow[i + 1] = v1 * c[i + 1] + v0 * s[i + 1]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def stream_copy(source, target):
    """target[:] = source (1-D float32): a part of the roofline's copy-bandwidth measure."""
    for i in range(source.shape[0]):
        target[i] = source[i]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def stream_update(target):
    """target += 1 in place (1-D float32): a part of the roofline's update-bandwidth measure,
    the access pattern of the state pass (each line read, then written back)."""
    for i in range(target.shape[0]):
        target[i] += np.float32(1.0)


@numba.njit(nogil=True, cache=True, boundscheck=False, fastmath={"reassoc"})
def stream_sum(source):
    """The sum of a 1-D float32 array: a part of the roofline's read-bandwidth measure.
    Reassociation lets it keep vector sums (its value serves nothing but the reading)."""
    total = np.float32(0.0)
    for i in range(source.shape[0]):
        total += source[i]
    return total


# Sampling (`core.engine.sampling.sample_rows`) -----------------------------------------------


@numba.njit(nogil=True, cache=True, boundscheck=False)
def sample_rows(
    processed, raw, temperature, top_k, top_p, min_p, greedy, uniforms, tokens, logprobs
):
    """The next token of each row of processed logits (B, V) float32, and its logprob under
    the raw logits (B, V): greedy rows take the argmax (the lowest index on ties), the others
    temper, filter (top-k, top-p, min-p, each where set) and draw with their uniform in [0, 1).
    Writes tokens (B,) int64 and logprobs (B,) float32. Probabilities are float64."""
    B, V = processed.shape
    scaled = np.empty(V, np.float32)
    probs = np.empty(V, np.float64)
    ranked = np.empty(V, np.float64)
    for b in range(B):
        row = processed[b]
        if greedy[b]:
            token = 0
            for v in range(1, V):
                if row[v] > row[token]:
                    token = v
        else:
            for v in range(V):
                scaled[v] = row[v] / temperature[b]
            if top_k[b] > 0 or top_p[b] < 1.0 or min_p[b] > 0.0:
                filtered_probs(scaled, top_k[b], top_p[b], min_p[b], ranked, probs)
            else:
                softmax(scaled, probs)
            token = draw(probs, uniforms[b])
        tokens[b] = token
        logprobs[b] = log_softmax_at(raw[b], token)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def softmax(values, out):
    """out = softmax(values): float32 in, float64 out."""
    top = values.max()
    total = 0.0
    for v in range(values.shape[0]):
        out[v] = np.exp(np.float64(values[v]) - top)
        total += out[v]
    for v in range(values.shape[0]):
        out[v] /= total


@numba.njit(nogil=True, cache=True, boundscheck=False)
def filtered_probs(scaled, top_k, top_p, min_p, ranked, out):
    """Top-k, then top-p, then min-p of tempered logits (V,) into probabilities `out` (V,),
    in token order; `ranked` (V,) is scratch. Each filter works in descending-logit order (a
    stable sort: equal logits in index order) and sees the distribution the one before it
    left; the most likely token always survives. Top-p keeps a token while the mass strictly
    before it is short of top_p; min-p keeps those at least min_p times the top one.

    Only the candidates are sorted: without top-k, the tokens of probability above
    (1 - top_p) / V. The others hold less than 1 - top_p together, so the candidates hold
    more than top_p and the cut falls among them: every token top-p keeps is one."""
    V = scaled.shape[0]
    softmax(scaled, out)
    by_rank = 0 < top_k < V
    if by_rank:
        candidates = np.argsort(-scaled, kind="mergesort")[:top_k]
    else:
        floor = (1.0 - top_p) / V if top_p < 1.0 else 0.0
        members = np.nonzero(out > floor)[0]
        # members are in index order, so a stable sort of them is the full sort's order
        candidates = members[np.argsort(-scaled[members], kind="mergesort")]
    kept = candidates.shape[0]
    for i in range(kept):
        ranked[i] = out[candidates[i]]
    if by_rank:  # the distribution over the top k; else over all V
        renormalise(ranked[:kept])
    if top_p < 1.0:
        before = 0.0
        for i in range(kept):
            mass = ranked[i]
            if i > 0 and before >= top_p:
                ranked[i] = 0.0
            before += mass
        renormalise(ranked[:kept])
    if min_p > 0.0:
        floor = min_p * ranked[0]
        for i in range(1, kept):
            if ranked[i] < floor:
                ranked[i] = 0.0
        renormalise(ranked[:kept])
    out[:] = 0.0
    for i in range(kept):
        out[candidates[i]] = ranked[i]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def renormalise(probs):
    total = probs.sum()
    for i in range(probs.shape[0]):
        probs[i] /= total


@numba.njit(nogil=True, cache=True, boundscheck=False)
def draw(probs, uniform):
    """The token whose cumulative mass (in token order) first exceeds uniform times the total
    (the total absorbs rounding): one uniform per token, never a zero-mass token."""
    target = uniform * probs.sum()
    cumulative = 0.0
    for v in range(probs.shape[0]):
        cumulative += probs[v]
        if cumulative > target:
            return v
    return probs.shape[0] - 1


@numba.njit(nogil=True, cache=True, boundscheck=False)
def log_normaliser(row):
    """(max, log of the sum of exp(row - max)) of float32 logits (V,), in float64."""
    top = np.float64(row.max())
    total = 0.0
    for v in range(row.shape[0]):
        total += np.exp(np.float64(row[v]) - top)
    return top, np.log(total)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def log_softmax_at(row, token):
    """log_softmax(row)[token] of float32 logits (V,), in float64."""
    top, log_total = log_normaliser(row)
    return np.float64(row[token]) - top - log_total


@numba.njit(nogil=True, cache=True, boundscheck=False)
def log_softmax(row, out):
    """out = log_softmax(row) as float32, each value the one `log_softmax_at` gives."""
    top, log_total = log_normaliser(row)
    for v in range(row.shape[0]):
        out[v] = np.float64(row[v]) - top - log_total
