// Fused CUDA kernels for the bf16 OLMoE forward (moe-lens, src/olmoe/fused/ launches them).
//
// Each kernel rounds where transformers 5.17 (modeling_olmoe.py, integrations/moe.py grouped_mm
// path) rounds in bfloat16, so that our bf16 routing follows theirs:
//   RMSNorm   : f32 statistics, cast to bf16, then bf16(weight * normed)
//   router    : bf16 logits -> f32 softmax -> top-k (descending) -> weights (renormalised if asked)
//   SwiGLU    : bf16(bf16(silu_f32(gate)) * up)
//   combine   : sum over the k slots, in f32, of bf16(bf16(y) * bf16(weight)); one bf16 rounding
//   attention : rope in bf16 as `q*cos + rotate_half(q)*sin`; then either eager attention's
//               rounding (scores bf16(bf16(q.k) * scale), f32 softmax, probabilities cast to bf16,
//               P @ V in f32) or flash attention's, which SDPA uses for unpadded bf16 inputs (f32
//               scores, unnormalised exp(s - max) cast to bf16 for P @ V, divided by the f32 sum
//               at the end).
//
// Routing layout ("packed", per layer, planar f32): logits [N*E] | probs [N*E] | weights [N*k] |
// expert ids as floats [N*k].
//
// Built to PTX by crates/moe-lens/build.rs in CUDA builds, for the build's CUDA_COMPUTE_CAP (as
// `nvcc -O3 -ptx -arch=sm_$CAP`), so it loads on the GPU and driver it was built for.
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float b2f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 f2b(float x) { return __float2bfloat16_rn(x); }
__device__ __forceinline__ float rb(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx, as flash attention's exp2f
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// The sum of every thread's `v` in the block (blockDim.x a multiple of 32, at most 1024), for all.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) part[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.f;
        s = warp_sum(s);
        if (lane == 0) part[0] = s;
    }
    __syncthreads();
    return part[0];
}

// ------------------------------------------------------------------------------------------------
// RMSNorm, optionally after a residual add.
//   x      : [rows] rows of `cols`, row r starts at x + r * x_stride + x_off
//   res    : optional [rows, cols] residual added first (x + res rounded to bf16, as torch's add);
//            the sum is written to sum_out (contiguous [rows, cols]) when res is given
//   out    : [rows, cols] contiguous: bf16(w * bf16(x * rsqrt(mean(x^2) + eps)))
// One block per row, blockDim.x threads (a multiple of 32, at most 1024).
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void ml_rmsnorm_bf16(const bf16* __restrict__ x, const bf16* __restrict__ res,
                                           const bf16* __restrict__ w, bf16* __restrict__ out,
                                           bf16* __restrict__ sum_out, int cols, int x_stride,
                                           int x_off, float eps, const bf16* __restrict__ w2,
                                           bf16* __restrict__ out2, int cols2, int x_off2) {
    // blockIdx.y == 1: a second segment of the same rows (q and k norms in one launch)
    if (blockIdx.y == 1) {
        w = w2; out = out2; cols = cols2; x_off = x_off2; res = nullptr; sum_out = nullptr;
    }
    const int r = blockIdx.x;
    const bf16* xr = x + (size_t)r * x_stride + x_off;
    const bf16* rr = res ? res + (size_t)r * cols : nullptr;
    bf16* sr = sum_out ? sum_out + (size_t)r * cols : nullptr;
    float acc = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = b2f(xr[c]);
        if (rr) {
            v = rb(v + b2f(rr[c]));
            sr[c] = f2b(v);
        }
        acc += v * v;
    }
    const float inv = rsqrtf(block_sum(acc) / (float)cols + eps);
    bf16* o = out + (size_t)r * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = rr ? b2f(sr[c]) : b2f(xr[c]);
        o[c] = f2b(b2f(w[c]) * rb(v * inv));
    }
}

// The same with 8 consecutive values per thread, kept in registers between the two passes: cols ==
// 8 * blockDim.x, and every row start (x, res, out, sum_out, and the second segment's) 16-byte
// aligned. Each thread's 8 squares are summed in order, then the block's sums as above.
__device__ __forceinline__ void ld8(const bf16* p, float* v) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const bf16* h = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
    for (int m = 0; m < 8; m++) v[m] = b2f(h[m]);
}
__device__ __forceinline__ void st8(bf16* p, const float* v) {
    __align__(16) bf16 o[8];
#pragma unroll
    for (int m = 0; m < 8; m++) o[m] = f2b(v[m]);
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(o);
}
extern "C" __global__ void ml_rmsnorm8_bf16(const bf16* __restrict__ x, const bf16* __restrict__ res,
                                            const bf16* __restrict__ w, bf16* __restrict__ out,
                                            bf16* __restrict__ sum_out, int cols, int x_stride,
                                            int x_off, float eps, const bf16* __restrict__ w2,
                                            bf16* __restrict__ out2, int cols2, int x_off2) {
    if (blockIdx.y == 1) {
        w = w2; out = out2; cols = cols2; x_off = x_off2; res = nullptr; sum_out = nullptr;
    }
    const int r = blockIdx.x, c = 8 * threadIdx.x;
    float v[8];
    ld8(x + (size_t)r * x_stride + x_off + c, v);
    if (res) {
        float a[8];
        ld8(res + (size_t)r * cols + c, a);
#pragma unroll
        for (int m = 0; m < 8; m++) v[m] = rb(v[m] + a[m]);
        st8(sum_out + (size_t)r * cols + c, v);
    }
    float acc = 0.f;
#pragma unroll
    for (int m = 0; m < 8; m++) acc += v[m] * v[m];
    const float inv = rsqrtf(block_sum(acc) / (float)cols + eps);
    float wv[8];
    ld8(w + c, wv);
#pragma unroll
    for (int m = 0; m < 8; m++) v[m] = b2f(f2b(wv[m] * rb(v[m] * inv)));
    st8(out + (size_t)r * cols + c, v);
}

// ------------------------------------------------------------------------------------------------
// Router: one warp per row. logits bf16, element (r, e) at r * logits_stride + e * col_stride
// -> packed f32, planar over the rows:
//   [0, E)        logits (f32 copies of the bf16 logits)
//   [E, 2E)       softmax probabilities (f32)
//   [2E, 2E+k)    mixing weights of the chosen experts (renormalised if norm_topk)
//   [2E+k, 2E+2k) chosen expert ids, best first, as floats (exact below 2^24)
// Ties are broken towards the lower expert id. E <= 32 * 8, k <= E. Interventions: see `add` and
// `forced` below (logits stay the router's own; probs, weights and ids are those applied).
// ------------------------------------------------------------------------------------------------
#define ROUTE_MAX_PER_LANE 8
extern "C" __global__ void ml_route_bf16(const bf16* __restrict__ logits, int logits_stride,
                                         int col_stride, float* __restrict__ packed, int rows, int E,
                                         int k, int norm_topk, const float* __restrict__ add,
                                         const unsigned int* __restrict__ forced) {
    const int warps = blockDim.x >> 5;
    const int r = blockIdx.x * warps + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const bf16* lr = logits + (size_t)r * logits_stride;
    float* lo = packed + (size_t)r * E;                      // logits
    float* po = packed + (size_t)rows * E + (size_t)r * E;   // probs
    float* wo = packed + (size_t)rows * 2 * E + (size_t)r * k;        // weights
    float* io = packed + (size_t)rows * (2 * E + k) + (size_t)r * k;  // ids
    // interventions (moe_lens::intervene): `add` [rows, E] is added to the logits before the
    // softmax (−inf: ablated, never chosen); a row of `forced` [rows, k] not starting with
    // 0xffffffff is the only experts this row may choose. Both may be null.
    const float* ar = add ? add + (size_t)r * E : nullptr;
    const unsigned int* fr = (forced && forced[(size_t)r * k] != 0xffffffffu) ? forced + (size_t)r * k : nullptr;
    unsigned eligible = 0;  // bit m: this lane's element m may be chosen
    float v[ROUTE_MAX_PER_LANE];
    float mx = -INFINITY;
#pragma unroll
    for (int m = 0; m < ROUTE_MAX_PER_LANE; m++) {
        int e = lane + 32 * m;
        float raw = e < E ? b2f(lr[(size_t)e * col_stride]) : -INFINITY;
        if (e < E) lo[e] = raw;  // the router's own logits
        float a = (ar && e < E) ? ar[e] : 0.f;
        v[m] = ar ? raw + a : raw;
        if (e < E && a != -INFINITY) eligible |= 1u << m;
        mx = fmaxf(mx, v[m]);
    }
    if (fr) {
        eligible = 0;
        for (int j = 0; j < k; j++) {
            int e = (int)fr[j];
            if (e < E && (e & 31) == lane) eligible |= 1u << (e >> 5);
        }
    }
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
    float s = 0.f;
    float p[ROUTE_MAX_PER_LANE];
#pragma unroll
    for (int m = 0; m < ROUTE_MAX_PER_LANE; m++) {
        int e = lane + 32 * m;
        p[m] = e < E ? expf(v[m] - mx) : 0.f;
        s += p[m];
    }
    s = warp_sum(s);
#pragma unroll
    for (int m = 0; m < ROUTE_MAX_PER_LANE; m++) {
        int e = lane + 32 * m;
        if (e < E) {
            p[m] = p[m] / s;
            po[e] = p[m];
        }
    }
    // top-k by repeated warp arg-max
    unsigned taken = 0;  // bit m: this lane's element m is chosen
    float wsum = 0.f;
    for (int j = 0; j < k; j++) {
        float best = -1.f;
        int bi = 0x7fffffff;
#pragma unroll
        for (int m = 0; m < ROUTE_MAX_PER_LANE; m++) {
            int e = lane + 32 * m;
            if ((eligible & ~taken & (1u << m)) && (p[m] > best || (p[m] == best && e < bi))) {
                best = p[m];
                bi = e;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ob = __shfl_xor_sync(0xffffffff, best, o);
            int oi = __shfl_xor_sync(0xffffffff, bi, o);
            if (ob > best || (ob == best && oi < bi)) {
                best = ob;
                bi = oi;
            }
        }
        if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
        wsum += best;
        if (lane == 0) {
            wo[j] = best;
            io[j] = (float)bi;
        }
    }
    if (norm_topk) {
        __syncwarp();
        for (int j = lane; j < k; j += 32) wo[j] = wo[j] / wsum;
    }
}

// ------------------------------------------------------------------------------------------------
// SwiGLU. gu: N rows (row n at n * row_stride + row_off), each E blocks of [gate I | up I] with
// column c at c * col_stride (E = 1 for per-pair rows); out: [E, N, I] =
// bf16(bf16(silu(gate)) * up), silu in f32.
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void ml_swiglu_bf16(const bf16* __restrict__ gu, bf16* __restrict__ out, int N,
                                          int E, int I, int row_stride, int row_off, int col_stride) {
    const size_t total = (size_t)N * E * I;
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(t % I);
        const size_t ne = t / I;  // n * E + e
        const int e = (int)(ne % E);
        const size_t n = ne / E;
        const bf16* row = gu + n * (size_t)row_stride + row_off;
        const size_t c = (size_t)e * 2 * I + i;
        const float g = b2f(row[c * col_stride]);
        const float u = b2f(row[(c + I) * col_stride]);
        const float sg = rb(g / (1.0f + expf(-g)));
        out[((size_t)e * N + n) * I + i] = f2b(sg * u);
    }
}

// The same for contiguous columns (col_stride 1), 8 values of one row and expert per thread: I,
// row_stride and row_off multiples of 8, gu and out 16-byte aligned. Each value as above.
extern "C" __global__ void ml_swiglu8_bf16(const bf16* __restrict__ gu, bf16* __restrict__ out, int N,
                                           int E, int I, int row_stride, int row_off) {
    const int I8 = I / 8;
    const size_t total = (size_t)N * E * I8;
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        const int i = 8 * (int)(t % I8);
        const size_t ne = t / I8;  // n * E + e
        const int e = (int)(ne % E);
        const size_t n = ne / E;
        const bf16* row = gu + n * (size_t)row_stride + row_off + (size_t)e * 2 * I + i;
        float g[8], u[8], y[8];
        ld8(row, g);
        ld8(row + I, u);
#pragma unroll
        for (int m = 0; m < 8; m++) y[m] = rb(g[m] / (1.0f + expf(-g[m]))) * u[m];
        st8(out + ((size_t)e * N + n) * I + i, y);
    }
}

// ------------------------------------------------------------------------------------------------
// Expert combine. out[n, h] = bf16( sum_j bf16( bf16(y_j[n, h]) * bf16(w[n, j]) ) ), f32 sum over
// the k slots in slot order, where y_j is
//   dense (pos null): y [E, N, H], expert ids[n, j]   -> y[ids[n, j] * N + n, h]
//   grouped:          y [rows, H], row of pair n*k+j -> y[pos[n * k + j], h]
// w and ids: [N, k] each (the router's weights and ids sections).
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void ml_combine_bf16(const bf16* __restrict__ y, const float* __restrict__ w,
                                           const float* __restrict__ ids, const int* __restrict__ pos,
                                           bf16* __restrict__ out, int N, int H, int k) {
    const size_t total = (size_t)N * H;
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        const int h = (int)(t % H);
        const size_t n = t / H;
        float acc = 0.f;
        for (int j = 0; j < k; j++) {
            const float wj = rb(w[n * k + j]);
            const size_t row = pos ? (size_t)pos[n * k + j] : (size_t)ids[n * k + j] * N + n;
            acc += rb(b2f(y[row * H + h]) * wj);
        }
        out[t] = f2b(acc);
    }
}

// ------------------------------------------------------------------------------------------------
// Grouping (token, expert) pairs by expert for one batched matmul per projection.
// ml_bucket_count: counts[e] += 1 for every pair (counts zeroed by the caller).
// ml_bucket_gather: one block per pair p (token p / k): takes the next slot c of its expert,
//   pos[p] = e * C + c, and copies the token's row into xg[e * C + c] (xg zeroed by the caller).
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void ml_bucket_count(const float* __restrict__ ids, int pairs,
                                           unsigned* __restrict__ counts) {
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += gridDim.x * blockDim.x)
        atomicAdd(&counts[(int)ids[p]], 1u);
}
extern "C" __global__ void ml_bucket_gather(const float* __restrict__ ids, const bf16* __restrict__ x,
                                            unsigned* __restrict__ fill, int* __restrict__ pos,
                                            bf16* __restrict__ xg, int k, int H, int C) {
    const int p = blockIdx.x;
    __shared__ int dst;
    if (threadIdx.x == 0) {
        const int e = (int)ids[p];
        const int c = (int)atomicAdd(&fill[e], 1u);
        dst = e * C + c;
        pos[p] = dst;
    }
    __syncthreads();
    const bf16* src = x + (size_t)(p / k) * H;
    bf16* d = xg + (size_t)dst * H;
    for (int h = threadIdx.x; h < H; h += blockDim.x) d[h] = src[h];
}

// ------------------------------------------------------------------------------------------------
// NeoX RoPE for the path without the fused attention (a KV cache, longer inputs), rounded as the
// fused attention and transformers' bf16 ops round: out = bf16(bf16(x * c) + bf16(rot * s)), rot =
// rotate_half(x), each product and the sum computed in f32 and rounded once. (candle's bf16 rope
// writes `x * c - x2 * s` in bf16 operators, which an sm_90 build compiles to contractible
// mul.bf16/sub.bf16 and an sm_80 build to separately rounded fma.rn.bf16: the two builds then
// round differently.)
//   x, out: [rows, T, D] contiguous (rows = batch * heads), positions offset .. offset + T
//   cosb, sinb: bf16 tables [>= offset + T, D/2]
// ------------------------------------------------------------------------------------------------
extern "C" __global__ void ml_rope_bf16(const bf16* __restrict__ x, bf16* __restrict__ out,
                                        const bf16* __restrict__ cosb, const bf16* __restrict__ sinb,
                                        int rows, int T, int D, int offset) {
    const int half = D / 2;
    const long long total = (long long)rows * T * D;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int d = (int)(i % D);
        const int t = (int)((i / D) % T);
        const int dc = d % half;
        const float c = b2f(cosb[(offset + t) * half + dc]), s = b2f(sinb[(offset + t) * half + dc]);
        const float v = b2f(x[i]);
        const float rot = d < half ? -b2f(x[i + half]) : b2f(x[i - half]);
        out[i] = f2b(rb(v * c) + rb(rot * s));
    }
}

// ------------------------------------------------------------------------------------------------
// Causal attention for short prefills (no KV cache), one block of ATT_WARPS warps per (batch, head,
// chunk of ATT_WARPS queries): grid (B * heads, ceil(T / ATT_WARPS)), one warp per query; a block
// loads only the keys its queries can see.
//   q, k, v: row r = b*T + t of each at ptr + r * stride, heads*D values, head h at h*D (q and k
//            already RMS-normed, not yet rotated)
//   cos/sin: [>= T, D/2] bf16 tables
//   lens  : [B] real lengths (keys at or past it are masked), or null (all T real)
//   out   : [B, T, heads, D] bf16
// D must be 128 and T <= ATT_MAX_T. eager = 1 rounds scores as eager attention does.
// ------------------------------------------------------------------------------------------------
#define ATT_D 128
#define ATT_MAX_T 64
#define ATT_WARPS 8
extern "C" __global__ void ml_attn_bf16(const bf16* __restrict__ qp, const bf16* __restrict__ kp,
                                        const bf16* __restrict__ vp, int q_stride, int k_stride, int v_stride,
                                        const bf16* __restrict__ cosb, const bf16* __restrict__ sinb,
                                        const uint32_t* __restrict__ lens, bf16* __restrict__ out, int T,
                                        int heads, float scale, int eager) {
    const int b = blockIdx.x / heads, h = blockIdx.x % heads;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int half = ATT_D / 2;
    __shared__ bf16 ks[ATT_MAX_T][ATT_D];
    __shared__ bf16 vs[ATT_MAX_T][ATT_D];
    __shared__ float sc[ATT_WARPS][ATT_MAX_T];
    const int len = lens ? (int)lens[b] : T;
    const int q0 = blockIdx.y * ATT_WARPS;
    const int kT = min(T, q0 + ATT_WARPS);  // keys 0 .. kT - 1 are all any query of this block sees
    // keys (rotated) and values into shared memory
    for (int t = threadIdx.x; t < kT * ATT_D; t += blockDim.x) {
        const int j = t / ATT_D, d = t % ATT_D;
        const bf16* kr = kp + (size_t)(b * T + j) * k_stride + (size_t)h * ATT_D;
        const bf16* vr = vp + (size_t)(b * T + j) * v_stride + (size_t)h * ATT_D;
        const int dc = d % half;
        const float c = b2f(cosb[j * half + dc]), s = b2f(sinb[j * half + dc]);
        const float x = b2f(kr[d]);
        const float rot = d < half ? -b2f(kr[d + half]) : b2f(kr[d - half]);
        ks[j][d] = f2b(rb(x * c) + rb(rot * s));
        vs[j][d] = vr[d];
    }
    __syncthreads();
    for (int i = q0 + wid; i < kT; i += ATT_WARPS) {
        const bf16* qr = qp + (size_t)(b * T + i) * q_stride + (size_t)h * ATT_D;
        float q[4];
#pragma unroll
        for (int m = 0; m < 4; m++) {
            const int d = lane + 32 * m;
            const int dc = d % half;
            const float c = b2f(cosb[i * half + dc]), s = b2f(sinb[i * half + dc]);
            const float x = b2f(qr[d]);
            const float rot = d < half ? -b2f(qr[d + half]) : b2f(qr[d - half]);
            q[m] = rb(rb(x * c) + rb(rot * s));
        }
        const int last = min(i, len - 1);  // keys 0..=last (padding rows see the real keys)
        float mx = -INFINITY;
        for (int j0 = 0; j0 <= last; j0 += 4) {
            // four keys at a time: their warp sums interleave (each sum as warp_sum computes it)
            float p[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int j = min(j0 + u, last);
                p[u] = 0.f;
#pragma unroll
                for (int m = 0; m < 4; m++) p[u] += q[m] * b2f(ks[j][lane + 32 * m]);
            }
            for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
                for (int u = 0; u < 4; u++) p[u] += __shfl_xor_sync(0xffffffff, p[u], o);
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                if (j0 + u <= last) {
                    // eager: bf16 scores, scaled in bf16; flash: raw f32 scores (scaled inside exp2 below)
                    const float s = eager ? rb(rb(p[u]) * scale) : p[u];
                    if (lane == 0) sc[wid][j0 + u] = s;
                    mx = fmaxf(mx, s);
                }
            }
        }
        __syncwarp();
        float sum = 0.f;
        const float sl2 = scale * 1.4426950408889634f;
        for (int j = lane; j <= last; j += 32) {
            const float e = eager ? expf(sc[wid][j] - mx) : fast_exp2(fmaf(sc[wid][j], sl2, -mx * sl2));
            sc[wid][j] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        __syncwarp();
        float o[4] = {0.f, 0.f, 0.f, 0.f};
        for (int j = 0; j <= last; j++) {
            // eager: normalised probabilities in bf16; flash: unnormalised ones, divided at the end
            const float pj = eager ? rb(sc[wid][j] / sum) : rb(sc[wid][j]);
#pragma unroll
            for (int m = 0; m < 4; m++) o[m] += pj * b2f(vs[j][lane + 32 * m]);
        }
        if (!eager) {
#pragma unroll
            for (int m = 0; m < 4; m++) o[m] = o[m] / sum;
        }
        bf16* orow = out + ((size_t)(b * T + i) * heads + h) * ATT_D;
#pragma unroll
        for (int m = 0; m < 4; m++) orow[lane + 32 * m] = f2b(o[m]);
        __syncwarp();
    }
}

// ------------------------------------------------------------------------------------------------
// Dequantizing stacked expert weights (ggml block formats) to bf16, for the batched quantized path:
// a batch long enough reads every expert anyway, so the experts of a few experts at a time are
// expanded to bf16 and multiplied on the matrix units, as the bf16 path does.
//   src : the first block of expert e0's rows; `ne` experts of R rows of C values (C a multiple of
//         the block size), rows one after another
//   dst : value (e, r, c) at dst[(e * dst_rows + dst_off + r) * C + c] (so gate and up can fill
//         the two halves of a [ne, 2I, H] gate/up tensor)
// Each value is computed in f32 as ggml's reference does (no fused multiply-add), then rounded to
// bf16. C must be a multiple of 8 (block sizes are 32 and 256).
// ------------------------------------------------------------------------------------------------
// (float)q for |q| < 2^22 without the integer conversion instruction (a quarter-rate one, which
// bounded the short-input matmul): 0x4B400000 + q is the float 2^23 + 2^22 + q. Exact.
__device__ __forceinline__ float i2f(int q) { return __int_as_float(0x4B400000 + q) - 12582912.f; }

__device__ __forceinline__ float ld_half(const uint8_t* p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

// Each thread expands 8 consecutive values of one row (they share their block's scales) and
// stores them as one 16-byte write. `v` is the first value's index in its row (a multiple of 8).

// Q8_0: 34-byte blocks of 32 values: f16 d, int8 qs[32]; y = d * q
__device__ __forceinline__ void deq8_q8_0(const uint8_t* row, int v, float* y) {
    const uint8_t* b = row + (v / 32) * 34;
    const float d = ld_half(b);
    const uint8_t* q = b + 2 + v % 32;
#pragma unroll
    for (int m = 0; m < 8; m++) y[m] = __fmul_rn(d, i2f((int8_t)q[m]));
}

// Q4_K/Q5_K sub-block s (0..8) of the super-block at b: d * scale and dmin * min, from the f16 d
// and dmin and the 12 bytes of packed 6-bit scales and mins that follow them (ggml's
// get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(const uint8_t* b, int s, float* d1, float* m1) {
    const uint8_t* sc = b + 4;
    int scale, mn;
    if (s < 4) {
        scale = sc[s] & 63;
        mn = sc[s + 4] & 63;
    } else {
        scale = (sc[s + 4] & 0xF) | ((sc[s - 4] >> 6) << 4);
        mn = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
    }
    *d1 = __fmul_rn(ld_half(b), (float)scale);
    *m1 = __fmul_rn(ld_half(b + 2), (float)mn);
}

// Q4_K: 144-byte blocks of 256 values: f16 d, f16 dmin, 12 bytes of packed 6-bit scales and mins
// (8 sub-blocks of 32), 128 bytes of nibbles. Values 64j..64j+31 are the low nibbles of qs[32j..],
// 64j+32..64j+63 the high ones, with sub-block 2j and 2j+1's scale and min. y = d*sc*q - dmin*m.
__device__ __forceinline__ void deq8_q4_k(const uint8_t* row, int v, float* y) {
    const uint8_t* b = row + (v / 256) * 144;
    const int w = v % 256, j = w / 64, hi = (w % 64) / 32, l = w % 32, s = 2 * j + hi;
    float d1, m1;
    scale_min_k4(b, s, &d1, &m1);
    const uint2 raw = *reinterpret_cast<const uint2*>(b + 16 + 32 * j + l);  // 8-byte aligned
    const uint8_t* q = reinterpret_cast<const uint8_t*>(&raw);
#pragma unroll
    for (int m = 0; m < 8; m++) {
        const int nib = hi ? (q[m] >> 4) : (q[m] & 0xF);
        // d1 (an f16 times a 6-bit scale) times a 4-bit q is exact in f32, so the fused
        // multiply-add rounds once, as the separate multiply and subtract of ggml do
        y[m] = fmaf(d1, i2f(nib), -m1);
    }
}

// Q6_K: 210-byte blocks of 256 values: ql[128] (low 4 bits), qh[64] (high 2 bits), int8
// scales[16], f16 d. Per half n of 128 values, quarter t, lane l: the low bits are ql[64n + l +
// 32(t&1)] (low nibble for t < 2, high for t >= 2), the high bits (qh[32n + l] >> 2t) & 3, the
// scale scales[8n + l/16 + 2t]; y = d * scale * (q - 32).
__device__ __forceinline__ void deq8_q6_k(const uint8_t* row, int v, float* y) {
    const uint8_t* b = row + (v / 256) * 210;
    const int w = v % 256, n = w / 128, t = (w % 128) / 32, l = w % 32;
    const float dsc = __fmul_rn(ld_half(b + 208), (float)(int8_t)b[192 + 8 * n + l / 16 + 2 * t]);
#pragma unroll
    for (int m = 0; m < 8; m++) {
        const uint8_t lo = b[64 * n + l + m + 32 * (t & 1)];
        const int q = ((t < 2 ? (lo & 0xF) : (lo >> 4)) | (((b[128 + 32 * n + l + m] >> (2 * t)) & 3) << 4)) - 32;
        y[m] = __fmul_rn(dsc, i2f(q));
    }
}

// Q4_0: 18-byte blocks of 32 values: f16 d, 16 bytes of nibbles; values 0..15 are the low nibbles
// of qs[0..16], 16..31 the high ones; y = d * (q - 8).
__device__ __forceinline__ void deq8_q4_0(const uint8_t* row, int v, float* y) {
    const uint8_t* b = row + (v / 32) * 18;
    const float d = ld_half(b);
    const int w = v % 32, hi = w / 16;
    const uint8_t* q = b + 2 + w % 16;
#pragma unroll
    for (int m = 0; m < 8; m++) y[m] = __fmul_rn(d, i2f((hi ? (q[m] >> 4) : (q[m] & 0xF)) - 8));
}

// Q5_K: 176-byte blocks of 256 values: f16 d, f16 dmin, 12 bytes of scales and mins (as Q4_K),
// qh[32] (the fifth bits), qs[128] (nibbles as Q4_K). Value 64j + 32hi + l: nibble of qs[32j + l]
// (low for hi = 0) plus bit (2j + hi) of qh[l] as 16; y = d*sc*q - dmin*m.
__device__ __forceinline__ void deq8_q5_k(const uint8_t* row, int v, float* y) {
    const uint8_t* b = row + (v / 256) * 176;
    const int w = v % 256, j = w / 64, hi = (w % 64) / 32, l = w % 32, s = 2 * j + hi;
    float d1, m1;
    scale_min_k4(b, s, &d1, &m1);
    const uint8_t* qh = b + 16;
    const uint8_t* q = b + 48 + 32 * j + l;
#pragma unroll
    for (int m = 0; m < 8; m++) {
        const int nib = (hi ? (q[m] >> 4) : (q[m] & 0xF)) + (((qh[l + m] >> s) & 1) << 4);
        y[m] = fmaf(d1, i2f(nib), -m1);  // exact product (5-bit q), one rounding: as Q4_K
    }
}

// Block types by number, as the launchers name them: 0 Q8_0, 1 Q4_K, 2 Q6_K, 3 Q4_0, 4 Q5_K.
template <int TYPE>
__device__ __forceinline__ void deq8(const uint8_t* row, int v, float* y) {
    if (TYPE == 0) deq8_q8_0(row, v, y);
    else if (TYPE == 1) deq8_q4_k(row, v, y);
    else if (TYPE == 2) deq8_q6_k(row, v, y);
    else if (TYPE == 3) deq8_q4_0(row, v, y);
    else deq8_q5_k(row, v, y);
}

__device__ __forceinline__ void store8(bf16* dst, const float* y) {
    __align__(16) bf16 o[8];
#pragma unroll
    for (int m = 0; m < 8; m++) o[m] = f2b(y[m]);
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<uint4*>(o);
}
__device__ __forceinline__ void store8(float* dst, const float* y) {
    *reinterpret_cast<float4*>(dst) = make_float4(y[0], y[1], y[2], y[3]);
    *reinterpret_cast<float4*>(dst + 4) = make_float4(y[4], y[5], y[6], y[7]);
}

// grid: (ceil(C / 8 / blockDim.x), ne * R); thread x of block (bx, row) expands values 8x.. of row.
// OUT is bf16 (the batched bf16 path) or float (float32 models: ggml's values exactly).
template <int TYPE, typename OUT>
__device__ __forceinline__ void dequant_rows(const uint8_t* __restrict__ src, OUT* __restrict__ dst, int ne,
                                             int R, int C, long long row_bytes, int dst_rows, int dst_off) {
    const int er = blockIdx.y;  // e * R + r
    const int v = 8 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (er >= ne * R || v >= C) return;
    const int e = er / R, r = er % R;
    const uint8_t* row = src + (long long)er * row_bytes;
    float y[8];
    deq8<TYPE>(row, v, y);
    store8(dst + ((long long)e * dst_rows + dst_off + r) * C + v, y);
}
#define ML_DEQUANT(NAME, TYPE)                                                                           \
    extern "C" __global__ void ml_dequant_##NAME##_bf16(const uint8_t* src, bf16* dst, int ne, int R, int C, \
                                                        long long row_bytes, int dst_rows, int dst_off) {    \
        dequant_rows<TYPE, bf16>(src, dst, ne, R, C, row_bytes, dst_rows, dst_off);                       \
    }                                                                                                    \
    extern "C" __global__ void ml_dequant_##NAME##_f32(const uint8_t* src, float* dst, int ne, int R, int C, \
                                                       long long row_bytes, int dst_rows, int dst_off) {     \
        dequant_rows<TYPE, float>(src, dst, ne, R, C, row_bytes, dst_rows, dst_off);                      \
    }
ML_DEQUANT(q8_0, 0)
ML_DEQUANT(q4_k, 1)
ML_DEQUANT(q6_k, 2)
ML_DEQUANT(q4_0, 3)
ML_DEQUANT(q5_k, 4)

// ------------------------------------------------------------------------------------------------
// Quantized experts for short inputs (a sentence, a decode step): the matmul reads the ggml blocks
// and dequantizes inside the dot product, so each used expert's weights are read once, at their
// packed size, and experts nobody chose are not read at all.
//   src    : expert 0's first row; expert e's row r at src + e * expert_bytes + r * row_bytes,
//            rows of K values
//   xg     : [E, C, K] bf16, the rows routed to each expert (ml_bucket_gather's layout)
//   counts : [E] rows of each expert (rows c >= counts[e] are padding and are skipped)
//   out    : value (e, c, r) at out[(e * C + c) * out_stride + out_off + r]
// out = bf16( sum_v bf16(W_e[r, v]) * xg[e, c, v] ), the sum in f32: the products of the batched
// path, which expands the same weights to bf16 for cuBLAS (only the order of the sum differs).
// One warp per weight row (QMM_WARPS rows per block); each lane takes 8 consecutive values of every
// 256, so a warp reads one Q4_K/Q5_K/Q6_K block (or 8 Q8_0/Q4_0 blocks) per step. The expert's rows
// are taken `tile` at a time (tile <= QMM_TILE, tile * K bf16 in dynamic shared memory, shared by
// the block's warps), their sums in registers; the weights are re-read (from L1/L2) for each
// further tile. grid: (ceil(R / QMM_WARPS), E); block: 32 * QMM_WARPS threads.
// K must be a multiple of 8 and of the block size.
// ------------------------------------------------------------------------------------------------
#define QMM_WARPS 8
#define QMM_TILE 8
template <int TYPE>
__device__ __forceinline__ void qmm(const uint8_t* __restrict__ src, long long expert_bytes, long long row_bytes,
                                    int R, int K, const bf16* __restrict__ xg, const unsigned* __restrict__ counts,
                                    int C, bf16* __restrict__ out, int out_stride, int out_off, int tile) {
    extern __shared__ __align__(16) bf16 xs[];  // [tile, K]
    const int e = blockIdx.y;
    const int cnt = min((int)counts[e], C);
    if (cnt == 0) return;  // the same for the whole block
    const int lane = threadIdx.x & 31, r = blockIdx.x * QMM_WARPS + (threadIdx.x >> 5);
    const bool live = r < R;
    const uint8_t* row = src + (long long)e * expert_bytes + (long long)(live ? r : 0) * row_bytes;
    const bf16* xe = xg + (size_t)e * C * K;
    for (int c0 = 0; c0 < cnt; c0 += tile) {
        const int nt = min(tile, cnt - c0);
        __syncthreads();  // the previous tile is no longer read
        for (int j = threadIdx.x; j < nt * K / 8; j += blockDim.x)
            reinterpret_cast<uint4*>(xs)[j] = reinterpret_cast<const uint4*>(xe + (size_t)c0 * K)[j];
        __syncthreads();
        if (!live) continue;
        float acc[QMM_TILE];
#pragma unroll
        for (int t = 0; t < QMM_TILE; t++) acc[t] = 0.f;
        for (int v = 8 * lane; v < K; v += 256) {
            float w[8];
            deq8<TYPE>(row, v, w);
#pragma unroll
            for (int m = 0; m < 8; m += 2) {  // bf16 pairs: one conversion for two weights
                const __nv_bfloat162 p = __floats2bfloat162_rn(w[m], w[m + 1]);
                w[m] = __low2float(p);
                w[m + 1] = __high2float(p);
            }
#pragma unroll
            for (int t = 0; t < QMM_TILE; t++) {
                if (t < nt) {
                    const uint4 raw = *reinterpret_cast<const uint4*>(xs + (size_t)t * K + v);
                    const bf16* xv = reinterpret_cast<const bf16*>(&raw);
                    float s = 0.f;
#pragma unroll
                    for (int m = 0; m < 8; m++) s = fmaf(w[m], b2f(xv[m]), s);
                    acc[t] += s;
                }
            }
        }
#pragma unroll
        for (int t = 0; t < QMM_TILE; t++) {
            if (t < nt) {  // the same for the whole warp
                const float s = warp_sum(acc[t]);
                if (lane == 0) out[((size_t)e * C + c0 + t) * out_stride + out_off + r] = f2b(s);
            }
        }
    }
}
#define ML_QMM(NAME, TYPE)                                                                                     \
    extern "C" __global__ void ml_qmm_##NAME(const uint8_t* src, long long expert_bytes, long long row_bytes,   \
                                             int R, int K, const bf16* xg, const unsigned* counts, int C,      \
                                             bf16* out, int out_stride, int out_off, int tile) {               \
        qmm<TYPE>(src, expert_bytes, row_bytes, R, K, xg, counts, C, out, out_stride, out_off, tile);         \
    }
ML_QMM(q8_0, 0)
ML_QMM(q4_k, 1)
ML_QMM(q6_k, 2)
ML_QMM(q4_0, 3)
ML_QMM(q5_k, 4)

